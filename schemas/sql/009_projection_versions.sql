-- Which version of a projection's code built the rows of its live generation. A projection
-- raises its `version` when the same log would now give different rows (a fixed bug, a new
-- column). A leader that finds an older version rebuilds into the next generation while the
-- current rows keep serving, then swaps; one that finds a newer version (an instance of the
-- previous release during a rolling upgrade) does not lead, so it cannot write old-style rows
-- into new tables. Rows written before this migration were built by version 1.

alter table projector_checkpoints add column version integer not null default 1;
