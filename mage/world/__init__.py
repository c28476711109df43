"""The synthetic shapes world: scenes, training data, benchmark splits and "pretrained" assets."""
