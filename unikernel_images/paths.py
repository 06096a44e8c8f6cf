"""Where images and instances live on this host, under DBAAS_DATA_DIR."""

from pathlib import Path

from dbaas.env import data_dir


def images_dir() -> Path:
    return data_dir() / "images"


def instances_dir() -> Path:
    return data_dir() / "instances"
