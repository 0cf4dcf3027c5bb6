# ---
# jupyter:
#   jupytext:
#     formats: py:percent
# ---

# %%
import glob, importlib.util, os, subprocess, sys  # noqa: E401
if importlib.util.find_spec("landmark_kit") is None:  # on Kaggle: install from the bundle, offline
    wheels = glob.glob(os.environ.get("LANDMARK_KIT_INPUT", "/kaggle/input") + "/*/wheels/*.whl")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", *wheels], check=True)
