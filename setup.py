"""Adds the presets of configs/ to the wheel as the package ``flamingo.recipes`` (everything else is in
pyproject.toml): ``flamingo train --config configs/train/of-3b.yaml`` then works from any folder."""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages("src"), "flamingo.recipes"],
    package_dir={"": "src", "flamingo.recipes": "configs"},
)
