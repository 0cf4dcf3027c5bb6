# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # landmark-kit: landmark recognition (GAP)
# Internet off. The attached bundle (built by `python -m landmark_kit.kaggle build --track recognition`) holds
# the kit, the wheels Kaggle's image lacks, the ensemble, the stage-04 recipe and the checkpoints. The kernel
# extracts train and test with the ensemble, votes labels over the nearest train images (the recipe's steps),
# and writes `/kaggle/working/submission.csv` (`id,landmarks`), every test image included.

# %%
from landmark_kit.kaggle import run_kernel

submission = run_kernel("recognition")
