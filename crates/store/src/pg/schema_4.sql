-- Version 4: presence for the fleet. Which masters hold a session with
-- each minion: `minion/<id>/up` is stored when the first live master
-- hears the minion, `down` when the last one loses it.
CREATE TABLE tend_presence (
    minion   text   NOT NULL,
    owner    text   NOT NULL,
    since_us bigint NOT NULL,
    PRIMARY KEY (minion, owner)
);
