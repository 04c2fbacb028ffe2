"""Honcho v3's API (``/v3``), beside v1's, on the same store: workspaces are apps, peers are users."""
