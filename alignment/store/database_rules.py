"""What the database itself enforces, beside the tables (`schema`): the views of current rows,
append-only tables (UPDATE and DELETE refused) and the rules the queue counts rely on.

The trigger DDL is the one per-dialect piece of the store: SQLite and PostgreSQL triggers have
different syntax and no portable form, so each dialect has its own, refusing the same rows with
the same messages.
"""

from __future__ import annotations

VIEWS = [
    """CREATE VIEW current_rankings AS
            SELECT r.* FROM rankings r
            WHERE NOT EXISTS (SELECT 1 FROM rankings s WHERE s.supersedes = r.id)
              AND NOT EXISTS (SELECT 1 FROM retractions x WHERE x.ranking_id = r.id)""",
    """CREATE VIEW current_skips AS
            SELECT s.* FROM skips s
            WHERE NOT EXISTS (SELECT 1 FROM retractions x WHERE x.skip_id = s.id)""",
]

APPEND_ONLY = ("prompts", "candidates", "rankings", "ranking_items", "skips", "retractions")
ONE_CURRENT = "this annotator already has a current ranking or skip for this prompt"
SUPERSEDE_RETRACTED = (
    "a ranking supersedes only a retracted ranking of the same annotator and prompt"
)
RETRACT_CURRENT = "only a current ranking can be retracted"


def sqlite_append_only(table: str) -> list[str]:
    return [
        f"CREATE TRIGGER {table}_no_update BEFORE UPDATE ON {table} "
        f"BEGIN SELECT RAISE(ABORT, '{table} is append-only: add a new row instead'); END",
        f"CREATE TRIGGER {table}_no_delete BEFORE DELETE ON {table} "
        f"BEGIN SELECT RAISE(ABORT, '{table} is append-only: nothing saved is deleted'); END",
    ]


def sqlite_one_current(table: str) -> str:
    """A trigger refusing a ranking or skip by an annotator who has a current one for the
    prompt."""
    return f"""CREATE TRIGGER {table}_one_current BEFORE INSERT ON {table}
        WHEN EXISTS (SELECT 1 FROM current_rankings r
                     WHERE r.prompt_id = new.prompt_id AND r.annotator_id = new.annotator_id)
          OR EXISTS (SELECT 1 FROM current_skips s
                     WHERE s.prompt_id = new.prompt_id AND s.annotator_id = new.annotator_id)
        BEGIN SELECT RAISE(ABORT, '{ONE_CURRENT}'); END"""


# Rules the code keeps, kept by the database too (the queue counts rely on them): one current
# ranking or skip per annotator and prompt, and only a retracted ranking of the same annotator
# and prompt may be superseded; only a current ranking may be retracted.
SQLITE_RULES = [
    sqlite_one_current("rankings"),
    f"""CREATE TRIGGER rankings_supersede_retracted BEFORE INSERT ON rankings
           WHEN new.supersedes IS NOT NULL AND NOT EXISTS (
               SELECT 1 FROM rankings r JOIN retractions x ON x.ranking_id = r.id
               WHERE r.id = new.supersedes AND r.prompt_id = new.prompt_id
                 AND r.annotator_id = new.annotator_id)
           BEGIN SELECT RAISE(ABORT, '{SUPERSEDE_RETRACTED}'); END""",
    sqlite_one_current("skips"),
    f"""CREATE TRIGGER retractions_of_current BEFORE INSERT ON retractions
           WHEN EXISTS (SELECT 1 FROM rankings s WHERE s.supersedes = new.ranking_id)
           BEGIN SELECT RAISE(ABORT, '{RETRACT_CURRENT}'); END""",
]


def _plpgsql_refusal(function: str, condition: str, message: str) -> str:
    """A PostgreSQL trigger function refusing the new row when `condition` holds, as an
    integrity error (what SQLite's RAISE(ABORT) is too)."""
    return f"""CREATE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
          IF {condition} THEN
            RAISE EXCEPTION USING ERRCODE = 'integrity_constraint_violation',
              MESSAGE = '{message}';
          END IF;
          RETURN NEW;
        END $$"""


POSTGRES_RULES = [
    """CREATE FUNCTION refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
          RAISE EXCEPTION USING ERRCODE = 'integrity_constraint_violation',
            MESSAGE = TG_TABLE_NAME || CASE WHEN TG_OP = 'UPDATE'
              THEN ' is append-only: add a new row instead'
              ELSE ' is append-only: nothing saved is deleted' END;
        END $$""",
    *[
        statement
        for table in APPEND_ONLY
        for statement in (
            f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
            "FOR EACH ROW EXECUTE FUNCTION refuse_change()",
            f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
            "FOR EACH STATEMENT EXECUTE FUNCTION refuse_change()",
        )
    ],
    _plpgsql_refusal(
        "refuse_second_current",
        """EXISTS (SELECT 1 FROM current_rankings r
                      WHERE r.prompt_id = NEW.prompt_id AND r.annotator_id = NEW.annotator_id)
             OR EXISTS (SELECT 1 FROM current_skips s
                      WHERE s.prompt_id = NEW.prompt_id AND s.annotator_id = NEW.annotator_id)""",
        ONE_CURRENT,
    ),
    *[
        f"CREATE TRIGGER {table}_one_current BEFORE INSERT ON {table} "
        "FOR EACH ROW EXECUTE FUNCTION refuse_second_current()"
        for table in ("rankings", "skips")
    ],
    _plpgsql_refusal(
        "refuse_superseding_current",
        """NEW.supersedes IS NOT NULL AND NOT EXISTS (
               SELECT 1 FROM rankings r JOIN retractions x ON x.ranking_id = r.id
               WHERE r.id = NEW.supersedes AND r.prompt_id = NEW.prompt_id
                 AND r.annotator_id = NEW.annotator_id)""",
        SUPERSEDE_RETRACTED,
    ),
    # PostgreSQL fires a table's triggers in name order: this check before rankings_one_current,
    # as SQLite (newest trigger first) does.
    "CREATE TRIGGER rankings_check_supersedes BEFORE INSERT ON rankings "
    "FOR EACH ROW EXECUTE FUNCTION refuse_superseding_current()",
    _plpgsql_refusal(
        "refuse_retracting_superseded",
        "EXISTS (SELECT 1 FROM rankings s WHERE s.supersedes = NEW.ranking_id)",
        RETRACT_CURRENT,
    ),
    "CREATE TRIGGER retractions_of_current BEFORE INSERT ON retractions "
    "FOR EACH ROW EXECUTE FUNCTION refuse_retracting_superseded()",
]

RULES = {
    "sqlite": [s for table in APPEND_ONLY for s in sqlite_append_only(table)] + SQLITE_RULES,
    "postgresql": POSTGRES_RULES,
}
