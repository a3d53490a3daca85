"""``/v1``: detection, annotation, the model and the models, as the contract defines them."""
