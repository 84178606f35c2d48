"""README example: a flow fitted by tfp.vi.fit_surrogate_posterior to an unnormalised banana."""

import sys

import keras
import numpy as np
import tensorflow_probability as tfp

from tfpflows import plotting, targets, vi

out = sys.argv[1] if len(sys.argv) > 1 else "."
# log p~(x) = log N(x1; 0, 1.5^2) + log N(x2 - 0.5 (x1^2 - 1.5^2); 0, 1) + log Z, log Z = 1.5
target = targets.banana()

# A RealNVP surrogate on R^2. No data: ActNorm starts at the scale given, not from a batch.
model = vi.build_surrogate("realnvp", [2], num_steps=4, hidden=32, initial_scale=2.)
q = model.distribution(training=True)          # live: built once, trains every weight
losses = tfp.vi.fit_surrogate_posterior(        # TFP's own loop; it finds q's variables
    target.unnormalized_log_prob, q, optimizer=keras.optimizers.Adam(1e-2),
    num_steps=1500, sample_size=64, seed=(0, 1))

# ELBO = log Z - KL(q || p): with log Z known, the gap is the KL, with a standard error.
estimate = vi.elbo(target.unnormalized_log_prob, model.distribution(), num_samples=20000)
print(f"ELBO {estimate.elbo:.4f} +- {estimate.stderr:.4f} (log Z = {target.log_z}), "
      f"KL(q || p) = {estimate.kl(target.log_z):.4f}, importance-sampled log Z "
      f"{estimate.log_z:.4f}")
plotting.plot_curve(-np.asarray(losses), f"{out}/vi_banana_elbo.png", ylabel="ELBO",
                    reference=target.log_z, reference_label="log Z")
plotting.plot_density_pair(target.unnormalized_log_prob, model.log_prob,
                           f"{out}/vi_banana_density.png", bounds=target.bounds)
