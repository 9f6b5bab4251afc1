"""The train.py recipes (YAML files beside this module), shipped as package data: a clone and an installed package
read the same files. ``mlit-config`` (:mod:`timm_mlit.recipes`) lists, prints and writes them by name."""
from pathlib import Path

RECIPE_DIR = Path(__file__).resolve().parent
