"""The main job: `tamiyo-bus demo`, a morphogenetic training run end to end, with its
progress bar, printed summary and HTML run report."""
