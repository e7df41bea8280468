"""Service: `lifelong run`'s main loop (`loop`) and what it serves and signals: HTTP (`http`),
metrics (`metrics`), systemd notify (`notify`), the champion-change hook (`hooks`), logging (`logs`)."""
