"""The inference halves of the model families: networks, how an export is loaded, and their colorizers.

Nothing here imports training code; the training halves are in :mod:`colorization.tasks`.
"""
