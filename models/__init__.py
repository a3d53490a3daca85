"""The demo model, shipped inside the distribution as the package ``yoloserve.models``.

pyproject.toml maps that package onto this folder, so the files stay at ``models/`` in the checkout
and an installed copy carries them too. Find them with ``service.resources.demo_model_path()``.
"""
