# Run from this folder: every path is relative to it.
# 2026-11-27 08:38 UTC gan (attempt 1)
python -m accelerate.commands.launch --config_file ../../accelerate_config.yaml ../../train_gan.py --train_data_dir ../../../shared/data/afhq_cat --resolution 64 --num_train_epochs 10 --train_batch_size 32 --eval_batch_size 32 --mixed_precision bf16 --seed 1 --output_dir models/gan --resume_from_checkpoint latest --lambda_perceptual 0
# 2026-11-27 09:05 UTC evaluation (attempt 1)
python -m accelerate.commands.launch --config_file ../../accelerate_config.yaml ../../evaluate.py --checkpoints models/gan --names GAN --train_data_dir ../../../shared/data/afhq_cat --resolution 64 --batch_size 32 --seed 1 --samplers dpm:20 --output_dir evaluation --num_samples 8 --num_samples_images 96 --metrics psnr,ssim,colorfulness,ab_distance
