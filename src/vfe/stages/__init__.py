"""The stages of the main job, one module each; `vfe.experiment.run` calls them in order."""
