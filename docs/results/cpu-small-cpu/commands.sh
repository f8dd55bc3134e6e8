# Run from this folder: every path is relative to it.
# 2026-11-27 07:30 UTC cnn (attempt 1)
python -m accelerate.commands.launch --config_file ../../accelerate_config.yaml ../../train_cnn.py --train_data_dir ../../../shared/data/afhq_cat --resolution 64 --num_train_epochs 10 --train_batch_size 32 --eval_batch_size 32 --mixed_precision bf16 --seed 0 --output_dir models/cnn --resume_from_checkpoint latest --no-pretrained_backbone
# 2026-11-27 07:34 UTC gan (attempt 1)
python -m accelerate.commands.launch --config_file ../../accelerate_config.yaml ../../train_gan.py --train_data_dir ../../../shared/data/afhq_cat --resolution 64 --num_train_epochs 10 --train_batch_size 32 --eval_batch_size 32 --mixed_precision bf16 --seed 0 --output_dir models/gan --resume_from_checkpoint latest --lambda_perceptual 0
# 2026-11-27 07:56 UTC diffusion (attempt 1)
python -m accelerate.commands.launch --config_file ../../accelerate_config.yaml ../../train_diffusion.py --train_data_dir ../../../shared/data/afhq_cat --resolution 64 --num_train_epochs 10 --train_batch_size 32 --eval_batch_size 32 --mixed_precision bf16 --seed 0 --output_dir models/diffusion --resume_from_checkpoint latest --unet_preset small --prediction_type sample --learning_rate 5e-4 --lr_warmup_steps 100 --validation_sampler dpm --validation_inference_steps 20
# 2026-11-27 08:22 UTC evaluation (attempt 1)
python -m accelerate.commands.launch --config_file ../../accelerate_config.yaml ../../evaluate.py --checkpoints models/cnn models/gan models/diffusion --names CNN GAN Diffusion --train_data_dir ../../../shared/data/afhq_cat --resolution 64 --batch_size 32 --seed 0 --samplers dpm:20 --output_dir evaluation --num_samples 8 --num_samples_images 96 --metrics psnr,ssim,colorfulness,ab_distance
