"""Volume to network grid: nnU-Net's preprocessing (on all cores where it is the default one), grid mapping, body mask."""
