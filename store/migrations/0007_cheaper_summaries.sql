-- flowscribe.summarise() for less: a worker pays for its analytics summaries in every batch,
-- and part of that bill grew with the size of the database (bench/ANALYTICS.md).
--
-- 1. Every statement of summarise() reads or deletes the rows of a batch's analyses, by id.
--    Where statistics are missing or stale (a new database, a bulk load, autovacuum off or
--    behind), the planner cannot tell that `analysis_id = ANY (ids)` on a key that is not
--    unique (conversation_terms', the sentence tables') finds a handful of rows per id, and
--    chose to scan whole tables: the terms delete read all of conversation_terms in every
--    batch, so a batch cost more the larger the database. These statements are only ever
--    right as index lookups, so the function plans them with sequential scans ruled out.
-- 2. The worker connects with plan_cache_mode = force_custom_plan (its own statements are
--    planned for the batch at hand), so each call also planned these statements afresh:
--    about 5 ms of a 20 ms call for 100 small analyses. Their plan cannot depend on the ids
--    (index lookups whatever the batch), so the function keeps one plan per connection.
-- 3. The zone was read FOR SHARE: a row lock writes the row, and concurrent batches turn it
--    into a new MultiXact each time. A shared transaction-scoped advisory lock serialises the
--    same pair (writers against a change of zone) and writes nothing. Its key is the two-int4
--    form, a space apart from the bigint keys the worker locks per batch.
--
-- What the function computes is unchanged (tests/test_analytics.py holds it to the payloads).

CREATE OR REPLACE FUNCTION flowscribe.summarise(ids uuid[], OUT summaries integer, OUT terms integer)
LANGUAGE plpgsql
SET enable_seqscan = off                  -- (1) above
SET plan_cache_mode = force_generic_plan  -- (2) above
AS $$
DECLARE
    zone text;
BEGIN
    PERFORM pg_advisory_xact_lock_shared(0, 2026003);  -- (3) above; see set_reporting_time_zone
    SELECT time_zone INTO zone FROM flowscribe.reporting;
    DELETE FROM flowscribe.conversation_terms WHERE analysis_id = ANY (ids);
    DELETE FROM flowscribe.conversation_summaries WHERE analysis_id = ANY (ids);
    INSERT INTO flowscribe.conversation_summaries
    SELECT a.id, a.callback_id, a.job_id, a.language_code, a.date_created, a.received_at,
           (coalesce(a.date_created, a.received_at) AT TIME ZONE zone)::date,
           sc.agent_id, se.sentences, se.agent_sentences, se.customer_sentences, se.agent_talk_share,
           sc.scorings, sc.score_performance, sc.score_empathy, sc.score_quality, sc.score_ownership,
           sc.score_compliments, sc.score_summary, sc.customer_satisfaction_percentage,
           sc.silence_percentage, sc.problem_resolution_percentage, sc.customer_effort_percentage,
           sc.customer_average_rating, sc.waiting_time, sc.cross_talking, sc.joy, sc.negativity,
           sc.anger, sc.shouting, sc.disgust, sc.fear, sc.sadness, sc.relevance, sc.sentiment_score
    FROM flowscribe.analyses AS a
    CROSS JOIN LATERAL (
        SELECT count(*) AS sentences,
               count(*) FILTER (WHERE s.is_agent) AS agent_sentences,
               count(*) FILTER (WHERE NOT s.is_agent) AS customer_sentences,
               sum(length(s.sentence)) FILTER (WHERE s.is_agent)::double precision
                   / nullif(sum(length(s.sentence)) FILTER (WHERE s.is_agent IS NOT NULL), 0) AS agent_talk_share
        FROM flowscribe.sentences AS s WHERE s.analysis_id = a.id
    ) AS se
    CROSS JOIN LATERAL (
        SELECT mode() WITHIN GROUP (ORDER BY c.agent_id) AS agent_id, count(*) AS scorings,
               avg(c.score_performance) AS score_performance, avg(c.score_empathy) AS score_empathy,
               avg(c.score_quality) AS score_quality, avg(c.score_ownership) AS score_ownership,
               avg(c.score_compliments) AS score_compliments, avg(c.score_summary) AS score_summary,
               avg(c.customer_satisfaction_percentage) AS customer_satisfaction_percentage,
               avg(c.silence_percentage) AS silence_percentage,
               avg(c.problem_resolution_percentage) AS problem_resolution_percentage,
               avg(c.customer_effort_percentage) AS customer_effort_percentage,
               avg(c.customer_average_rating) AS customer_average_rating,
               avg(c.waiting_time) AS waiting_time, avg(c.cross_talking) AS cross_talking,
               avg(c.joy) AS joy, avg(c.negativity) AS negativity, avg(c.anger) AS anger,
               avg(c.shouting) AS shouting, avg(c.disgust) AS disgust, avg(c.fear) AS fear,
               avg(c.sadness) AS sadness, avg(c.relevance) AS relevance,
               avg(c.sentiment_score) AS sentiment_score
        FROM flowscribe.sentence_scorings AS c WHERE c.analysis_id = a.id
    ) AS sc
    WHERE a.id = ANY (ids);
    GET DIAGNOSTICS summaries = ROW_COUNT;

    INSERT INTO flowscribe.conversation_terms (analysis_id, kind, term, mentions, day)
    SELECT d.analysis_id, t.kind, t.term, t.mentions, d.day
    FROM flowscribe.conversation_summaries AS d
    CROSS JOIN LATERAL (
        SELECT 'topic' AS kind, x.topic AS term, count(*) AS mentions
        FROM flowscribe.sentence_topics AS x
        WHERE x.analysis_id = d.analysis_id AND x.topic IS NOT NULL GROUP BY x.topic
        UNION ALL
        SELECT 'intent', x.intent, count(*)
        FROM flowscribe.sentence_intents AS x
        WHERE x.analysis_id = d.analysis_id AND x.intent IS NOT NULL GROUP BY x.intent
        UNION ALL
        SELECT 'keyword', x.keyword, count(*)
        FROM flowscribe.sentence_keywords AS x
        WHERE x.analysis_id = d.analysis_id AND x.keyword IS NOT NULL GROUP BY x.keyword
        UNION ALL
        SELECT 'entity', x.entity_name, count(*)
        FROM flowscribe.sentence_entities AS x
        WHERE x.analysis_id = d.analysis_id AND x.entity_name IS NOT NULL GROUP BY x.entity_name
    ) AS t
    WHERE d.analysis_id = ANY (ids);
    GET DIAGNOSTICS terms = ROW_COUNT;
END
$$;

CREATE OR REPLACE FUNCTION flowscribe.set_reporting_time_zone(zone text) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    current text;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_timezone_names WHERE name = zone) THEN
        RAISE EXCEPTION 'unknown time zone %', quote_literal(zone)
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'use a name from pg_timezone_names, e.g. UTC or America/New_York';
    END IF;
    -- Waits for the writers summarising under the zone (they hold this lock shared), and
    -- holds off new ones until this transaction ends.
    PERFORM pg_advisory_xact_lock(0, 2026003);
    SELECT time_zone INTO current FROM flowscribe.reporting;
    IF current = zone THEN
        RETURN false;
    END IF;
    UPDATE flowscribe.reporting SET time_zone = zone;
    UPDATE flowscribe.conversation_summaries
    SET day = (coalesce(date_created, received_at) AT TIME ZONE zone)::date;
    UPDATE flowscribe.conversation_terms AS t SET day = s.day
    FROM flowscribe.conversation_summaries AS s
    WHERE t.analysis_id = s.analysis_id AND t.day <> s.day;
    RETURN true;
END
$$;
