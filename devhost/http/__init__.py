"""HTTP offline: the registered HTTP functions served on loopback, the live page at /."""
