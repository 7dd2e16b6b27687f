"""s2dc_jax.tasks: downstream fine-tuning (segmentation, classification, translation, reconstruction).

metrics (Dice, accuracy, AUC, PSNR, SSIM, NRMSE), sliding_window (MONAI-equal inference
in JAX), trainer (the shared loop), segmentation / classification / regression (per-task
loss and evaluation, each with `run(config, workdir)`), init (weights from a pretraining
workdir or a MONAI file), data (splits, preprocessing, crops, NIfTI predictions).
"""
