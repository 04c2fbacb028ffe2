"""What Rapport does with a user's data: derivation and the dialectic, over storage and models."""
