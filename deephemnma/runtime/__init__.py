"""Running anywhere: errors, atomic files, resumable chunks, torch.distributed ranks and the machine."""
