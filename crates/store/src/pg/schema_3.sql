-- Version 3: operators' key decisions, heard by every master. A key
-- accepted, rejected, deleted or labelled through one master is applied
-- by the others to their own key stores (each keeps its key files).
CREATE TABLE tend_key_changes (
    id          bigserial PRIMARY KEY,
    owner       text   NOT NULL,
    kind        text   NOT NULL,
    action      text   NOT NULL,
    name        text   NOT NULL,
    fingerprint text   NOT NULL,
    labels      text[] NOT NULL,
    at_us       bigint NOT NULL
);
