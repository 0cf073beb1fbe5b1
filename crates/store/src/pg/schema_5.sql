-- Version 5: the reactor's cursor exists from the start. Without it, a
-- master taking the reactor over from one that never stored a step read
-- "no cursor" as a new database and started at the last stored event,
-- passing over every event stored before it (found by the test of a
-- window counted across a takeover).
INSERT INTO tend_meta (key, value) VALUES ('reactor_cursor', 0)
ON CONFLICT (key) DO NOTHING;
