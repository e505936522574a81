"""Board-side scripts shipped inside every bundle: installer, launcher, supervisor (stdlib only)."""
