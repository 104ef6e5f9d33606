"""How SQLite ranking files made before PostgreSQL support were built: versions 1 and 2, as
they ran then, and the step to version 3 (`schema.CREATED_VERSION`). Kept so that such a file
opens and upgrades in place; a new database is created from `schema` directly."""

from __future__ import annotations

from .database_rules import SQLITE_RULES, VIEWS, sqlite_append_only

QUEUE_TRIGGERS = (
    "candidates_queue",
    "queue_added",
    "queue_ranked",
    "queue_done_added",
    "queue_done_removed",
    "rankings_queue",
    "skips_queue",
    "retractions_queue",
)

SQLITE_HISTORY: list[list[str]] = [
    [
        """CREATE TABLE prompts (
            id INTEGER PRIMARY KEY,
            key TEXT NOT NULL UNIQUE,
            messages TEXT NOT NULL CHECK (json_valid(messages)),
            source TEXT,
            created_at REAL NOT NULL
        )""",
        """CREATE TABLE candidates (
            id INTEGER PRIMARY KEY,
            prompt_id INTEGER NOT NULL REFERENCES prompts(id),
            position INTEGER NOT NULL CHECK (position >= 0),
            text TEXT NOT NULL,
            num_tokens INTEGER,
            finish_reason TEXT,
            model TEXT NOT NULL,
            adapter TEXT,
            settings TEXT NOT NULL CHECK (json_valid(settings)),
            seed INTEGER,
            created_at REAL NOT NULL,
            UNIQUE (prompt_id, position)
        )""",
        """CREATE TABLE annotators (
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            role TEXT NOT NULL CHECK (role IN ('annotator', 'admin')),
            created_at REAL NOT NULL
        )""",
        """CREATE TABLE assignments (
            id INTEGER PRIMARY KEY,
            token TEXT NOT NULL UNIQUE,
            prompt_id INTEGER NOT NULL REFERENCES prompts(id),
            annotator_id INTEGER NOT NULL REFERENCES annotators(id),
            created_at REAL NOT NULL,
            expires_at REAL NOT NULL,
            closed_at REAL,
            outcome TEXT CHECK (outcome IN ('ranked', 'skipped', 'released'))
        )""",
        "CREATE INDEX assignments_open ON assignments (prompt_id, closed_at, expires_at)",
        "CREATE INDEX assignments_annotator ON assignments (annotator_id, closed_at)",
        """CREATE TABLE rankings (
            id INTEGER PRIMARY KEY,
            prompt_id INTEGER NOT NULL REFERENCES prompts(id),
            annotator_id INTEGER NOT NULL REFERENCES annotators(id),
            assignment_id INTEGER REFERENCES assignments(id),
            supersedes INTEGER UNIQUE REFERENCES rankings(id),
            tie INTEGER NOT NULL CHECK (tie IN (0, 1)),
            created_at REAL NOT NULL
        )""",
        "CREATE INDEX rankings_prompt ON rankings (prompt_id, annotator_id)",
        "CREATE INDEX rankings_annotator ON rankings (annotator_id, created_at)",
        """CREATE TABLE ranking_items (
            ranking_id INTEGER NOT NULL REFERENCES rankings(id),
            candidate_id INTEGER NOT NULL REFERENCES candidates(id),
            rank INTEGER NOT NULL CHECK (rank >= 1),
            PRIMARY KEY (ranking_id, candidate_id)
        ) WITHOUT ROWID""",
        """CREATE TABLE skips (
            id INTEGER PRIMARY KEY,
            prompt_id INTEGER NOT NULL REFERENCES prompts(id),
            annotator_id INTEGER NOT NULL REFERENCES annotators(id),
            assignment_id INTEGER REFERENCES assignments(id),
            reason TEXT NOT NULL CHECK (length(trim(reason)) > 0),
            created_at REAL NOT NULL
        )""",
        "CREATE INDEX skips_prompt ON skips (prompt_id, annotator_id)",
        """CREATE TABLE retractions (
            id INTEGER PRIMARY KEY,
            ranking_id INTEGER UNIQUE REFERENCES rankings(id),
            skip_id INTEGER UNIQUE REFERENCES skips(id),
            annotator_id INTEGER NOT NULL REFERENCES annotators(id),
            created_at REAL NOT NULL,
            CHECK ((ranking_id IS NULL) <> (skip_id IS NULL))
        )""",
        *VIEWS,
        *[
            statement
            for table in ("prompts", "candidates", "rankings", "ranking_items", "skips")
            for statement in sqlite_append_only(table)
        ],
        *sqlite_append_only("retractions"),
    ],
    # 2: the queue, kept by triggers in the transaction of every write, so handing out the next
    # prompt and counting what is left cost the same at a million prompts as at a thousand.
    [
        # Rules the code already keeps, now kept by the database too (the queue counts rely on
        # them): one current ranking or skip per annotator and prompt, and only a retracted
        # ranking of the same annotator and prompt may be superseded.
        *SQLITE_RULES,
        # Every prompt with candidates, with its number of current rankings.
        """CREATE TABLE queue (
            prompt_id INTEGER PRIMARY KEY REFERENCES prompts(id),
            ranked INTEGER NOT NULL CHECK (ranked >= 0)
        )""",
        "CREATE INDEX queue_by_ranked ON queue (ranked, prompt_id)",
        # How many queued prompts have each `ranked` count.
        """CREATE TABLE queue_sizes (
            ranked INTEGER PRIMARY KEY,
            prompts INTEGER NOT NULL CHECK (prompts >= 0)
        )""",
        # (annotator, prompt) for every current ranking or skip: the prompts that annotator is
        # done with.
        """CREATE TABLE queue_done (
            annotator_id INTEGER NOT NULL REFERENCES annotators(id),
            prompt_id INTEGER NOT NULL REFERENCES queue(prompt_id),
            PRIMARY KEY (annotator_id, prompt_id)
        ) WITHOUT ROWID""",
        "CREATE INDEX queue_done_by_prompt ON queue_done (prompt_id, annotator_id)",
        # How many of an annotator's done prompts have each `ranked` count.
        """CREATE TABLE done_sizes (
            annotator_id INTEGER NOT NULL REFERENCES annotators(id),
            ranked INTEGER NOT NULL,
            prompts INTEGER NOT NULL CHECK (prompts >= 0),
            PRIMARY KEY (annotator_id, ranked)
        ) WITHOUT ROWID""",
        # Where an annotator's search for a prompt starts, per `per_prompt` (N): every queued
        # prompt below `next_prompt` is one they are done with, one with N or more rankings, or
        # one listed in queue_reopened (the triggers list a prompt there when it may have become
        # free again, rather than moving the cursor back over all the work since).
        """CREATE TABLE queue_cursors (
            annotator_id INTEGER NOT NULL REFERENCES annotators(id),
            per_prompt INTEGER NOT NULL CHECK (per_prompt >= 1),
            next_prompt INTEGER NOT NULL,
            PRIMARY KEY (annotator_id, per_prompt)
        ) WITHOUT ROWID""",
        """CREATE TABLE queue_reopened (
            annotator_id INTEGER NOT NULL,
            per_prompt INTEGER NOT NULL,
            prompt_id INTEGER NOT NULL,
            PRIMARY KEY (annotator_id, per_prompt, prompt_id),
            FOREIGN KEY (annotator_id, per_prompt)
              REFERENCES queue_cursors (annotator_id, per_prompt)
        ) WITHOUT ROWID""",
        "CREATE INDEX assignments_live ON assignments (closed_at, expires_at)",
        "CREATE INDEX skips_annotator ON skips (annotator_id, created_at)",
        """CREATE TRIGGER candidates_queue AFTER INSERT ON candidates
           WHEN NOT EXISTS (SELECT 1 FROM queue WHERE prompt_id = new.prompt_id)
           BEGIN
             INSERT INTO queue (prompt_id, ranked) VALUES (new.prompt_id,
               (SELECT count(*) FROM current_rankings WHERE prompt_id = new.prompt_id));
           END""",
        """CREATE TRIGGER queue_added AFTER INSERT ON queue BEGIN
             INSERT INTO queue_sizes (ranked, prompts) VALUES (new.ranked, 1)
               ON CONFLICT (ranked) DO UPDATE SET prompts = prompts + 1;
             INSERT OR IGNORE INTO queue_reopened (annotator_id, per_prompt, prompt_id)
               SELECT annotator_id, per_prompt, new.prompt_id FROM queue_cursors
               WHERE next_prompt > new.prompt_id;
           END""",
        """CREATE TRIGGER queue_ranked AFTER UPDATE OF ranked ON queue
           WHEN new.ranked <> old.ranked BEGIN
             UPDATE queue_sizes SET prompts = prompts - 1 WHERE ranked = old.ranked;
             INSERT INTO queue_sizes (ranked, prompts) VALUES (new.ranked, 1)
               ON CONFLICT (ranked) DO UPDATE SET prompts = prompts + 1;
             UPDATE done_sizes SET prompts = prompts - 1
               WHERE ranked = old.ranked AND annotator_id IN
                 (SELECT annotator_id FROM queue_done WHERE prompt_id = new.prompt_id);
             INSERT INTO done_sizes (annotator_id, ranked, prompts)
               SELECT annotator_id, new.ranked, 1 FROM queue_done
               WHERE prompt_id = new.prompt_id
               ON CONFLICT (annotator_id, ranked) DO UPDATE SET prompts = prompts + 1;
             -- Fewer rankings: maybe free again for every N it had reached.
             INSERT OR IGNORE INTO queue_reopened (annotator_id, per_prompt, prompt_id)
               SELECT annotator_id, per_prompt, new.prompt_id FROM queue_cursors
               WHERE next_prompt > new.prompt_id
                 AND per_prompt > new.ranked AND per_prompt <= old.ranked;
           END""",
        """CREATE TRIGGER queue_done_added AFTER INSERT ON queue_done BEGIN
             INSERT INTO done_sizes (annotator_id, ranked, prompts) VALUES (new.annotator_id,
               (SELECT ranked FROM queue WHERE prompt_id = new.prompt_id), 1)
               ON CONFLICT (annotator_id, ranked) DO UPDATE SET prompts = prompts + 1;
           END""",
        """CREATE TRIGGER queue_done_removed AFTER DELETE ON queue_done BEGIN
             UPDATE done_sizes SET prompts = prompts - 1
               WHERE annotator_id = old.annotator_id
                 AND ranked = (SELECT ranked FROM queue WHERE prompt_id = old.prompt_id);
             INSERT OR IGNORE INTO queue_reopened (annotator_id, per_prompt, prompt_id)
               SELECT annotator_id, per_prompt, old.prompt_id FROM queue_cursors
               WHERE annotator_id = old.annotator_id AND next_prompt > old.prompt_id;
           END""",
        """CREATE TRIGGER rankings_queue AFTER INSERT ON rankings BEGIN
             UPDATE queue SET ranked = ranked + 1 WHERE prompt_id = new.prompt_id;
             INSERT INTO queue_done (annotator_id, prompt_id)
               SELECT new.annotator_id, new.prompt_id
               WHERE EXISTS (SELECT 1 FROM queue WHERE prompt_id = new.prompt_id);
           END""",
        """CREATE TRIGGER skips_queue AFTER INSERT ON skips BEGIN
             INSERT INTO queue_done (annotator_id, prompt_id)
               SELECT new.annotator_id, new.prompt_id
               WHERE EXISTS (SELECT 1 FROM queue WHERE prompt_id = new.prompt_id);
           END""",
        """CREATE TRIGGER retractions_queue AFTER INSERT ON retractions BEGIN
             UPDATE queue SET ranked = ranked - 1
               WHERE prompt_id = (SELECT prompt_id FROM rankings WHERE id = new.ranking_id);
             DELETE FROM queue_done
               WHERE annotator_id = (SELECT annotator_id FROM rankings WHERE id = new.ranking_id)
                 AND prompt_id = (SELECT prompt_id FROM rankings WHERE id = new.ranking_id);
             DELETE FROM queue_done
               WHERE annotator_id = (SELECT annotator_id FROM skips WHERE id = new.skip_id)
                 AND prompt_id = (SELECT prompt_id FROM skips WHERE id = new.skip_id);
           END""",
        # Fill the queue from what an older file holds (the triggers above keep the counts).
        """INSERT INTO queue (prompt_id, ranked)
           SELECT p.id, (SELECT count(*) FROM current_rankings r WHERE r.prompt_id = p.id)
           FROM prompts p WHERE EXISTS (SELECT 1 FROM candidates c WHERE c.prompt_id = p.id)""",
        """INSERT INTO queue_done (annotator_id, prompt_id)
           SELECT DISTINCT annotator_id, prompt_id FROM (
             SELECT annotator_id, prompt_id FROM current_rankings
             UNION ALL SELECT annotator_id, prompt_id FROM current_skips)
           WHERE prompt_id IN (SELECT prompt_id FROM queue)""",
    ],
    # 3: the queue is kept by `queueing` in the same transaction instead, one code path for
    # SQLite and PostgreSQL; the tables stay as they are.
    [f"DROP TRIGGER {name}" for name in QUEUE_TRIGGERS],
]
