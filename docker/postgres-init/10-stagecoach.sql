-- The Temporal server owns the databases auto-setup creates; Stagecoach gets its own.
CREATE DATABASE stagecoach;
