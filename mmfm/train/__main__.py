"""`python -m mmfm.train --config experiments/configs/demo.py --workdir runs/demo [--config.x=y]`."""
from mmfm.cli import train_main

if __name__ == "__main__":
    train_main()
