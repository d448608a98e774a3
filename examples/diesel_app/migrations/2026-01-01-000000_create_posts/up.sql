-- The app's own table, as in Diesel's getting-started guide.
CREATE TABLE posts (
    id        INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL,
    title     TEXT    NOT NULL,
    body      TEXT    NOT NULL,
    published BOOLEAN NOT NULL DEFAULT 0
);
