-- A rebuild keeps its own checkpoint row ("<name>#g<N>") and deletes it when it swaps.
grant delete on projector_checkpoints to certplane_service;
