"""Sample inputs shipped with installed packages (no downloads); see :mod:`relprop.data.photos`."""
