"""The study and figure tools: they read run records and data sets, and the
method and the trainer never import them.

  plot          Figure 2 (the classifier's curves), the norm logs, the init ablation
  plot_bound    Figures 3 and 4 (the test bound of the VAE and DRAW)
  plot_returns  Figure 5 and Table 2 (the DQN's test returns)
  experiments   named runs: which finished, which to launch
  spectrum, residue, matching, reencode, compare
                the CIFAR-10 data studies (ZCA spectra, JPEG residue,
                matching the JPEG copy to the original, re-encoding, the
                comparison of the two)

Each is a command: `python -m wn_jax.study.<tool> --help`.
"""
