"""Update: stored rows become a candidate, and the gate decides. The cycle (`cycle`), the gate
(`gate`), the launcher of the training child (`launcher`), `lifelong update`'s request (`request`),
and the parent's side of `lifelong eval` and `predict` (`inference`)."""
