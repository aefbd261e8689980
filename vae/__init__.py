"""fullcov-vae: a full-covariance Gaussian VAE and a Cholesky covariance learner."""
