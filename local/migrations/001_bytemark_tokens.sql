-- docs/contract.md §3: the users' Bytemark OAuth tokens, as the portal database holds them.
-- Applied once per database by local/services.sh (recorded in schema_migrations); IF NOT EXISTS keeps it
-- harmless on a database that already has the table (a copy of a real portal schema).
CREATE TABLE IF NOT EXISTS bytemark_tokens (
  id       INT AUTO_INCREMENT PRIMARY KEY,
  user_id  INT NOT NULL,
  email    VARCHAR(255) NULL,
  password VARCHAR(255) NULL,
  token    TEXT NULL,
  status   VARCHAR(32) NULL,
  UNIQUE INDEX user_id_unique_idx__001 (user_id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;
