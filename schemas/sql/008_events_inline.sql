-- Keep an event's row in its heap page up to a whole page, instead of moving large values to
-- the TOAST table from 2 KB on (PostgreSQL's default target). A CertAdded's data (~2.8 KB:
-- the chain and the encrypted key) was compressed with pglz (to ~2.3 KB, still over the
-- target) and stored out of line: every append paid the compression and a second insert
-- (TOAST table and its index), and every read of it by a projection, the gateway or an
-- auditor the extra look-up and the decompression. Values that do not fit a page are still
-- compressed and moved out of line as before. Storage parameters are not rows: the
-- append-only triggers are not involved, and only rows written from now on are affected.

alter table events set (toast_tuple_target = 8160);
