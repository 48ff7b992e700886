"""Sample-quality metrics: toy W1 and modes, classifier FD, Inception FID/KID/IS, FLOP counting."""
