"""Compare colorization models on the same images: `python evaluate.py --checkpoints runs/cnn runs/gan ...`

Also `accelerate launch evaluate.py ...` to shard the images over several processes (same table).
"""

from colorization.evaluation import main

if __name__ == "__main__":
    main()
