"""The network: model, targets, data, augmentation, settings, training, model file, prediction and evaluation."""
