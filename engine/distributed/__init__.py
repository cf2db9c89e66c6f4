"""``tilewise batch --ray``: a batch's cases spread over Ray actors, one per GPU (or CPU actors without GPUs).

Ray is an optional extra (``pip install "tilewise[ray]"``): only this package imports it, and only when a batch
asks for Ray, so the engine and the command line work without it.

- :mod:`.cluster`: start or join the cluster, and how many actors with which resources;
- :mod:`.worker`: the actor, which loads the model once and runs one case at a time through the batch's stages;
- :mod:`.driver`: feeds cases to the actors, collects their records, retries a dead actor's cases elsewhere.
"""
