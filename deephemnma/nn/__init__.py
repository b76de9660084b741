"""The DeepHEMNMA network: ResNet + MLP, its data, training and inference (no Scipion imports)."""
