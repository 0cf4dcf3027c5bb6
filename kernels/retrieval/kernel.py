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
# # landmark-kit: landmark retrieval (mAP@100)
# Internet off. The attached bundle (built by `python -m landmark_kit.kaggle build --track retrieval`) holds
# the kit, the wheels Kaggle's image lacks, the ensemble, the stage-04 recipe and the checkpoints. The kernel
# extracts the index and test images (and train, for label re-ranking) with the ensemble, searches and
# re-ranks the 100 nearest index images per query, and writes `/kaggle/working/submission.csv` (`id,images`).

# %%
from landmark_kit.kaggle import run_kernel

submission = run_kernel("retrieval")
