-- FLOOR: the pipeline's semantics as one plain DuckDB SQL script (no Python per row, no GX).
--
-- Same rules as exports.md / outcomes.md and the pipeline, for the overall stratum:
--   read      every table file read once into memory, all columns as text (CSV, csv.gz,
--             Parquet rendered to text as the pipeline does);
--   validate  de-identification (identifier-value patterns on every column, age over 89),
--             manifest row counts, row rules (not null, type, pattern, enum, range,
--             per-instrument range and decimals, orphan patient_id, session order), exact
--             duplicates dropped, natural-key conflicts quarantined, blocked exports dropped;
--             supersession: per natural key, the accepted row of the export that sorts last;
--   derive    baseline / endpoint / follow-up per patient x instrument (primary + PHQ9
--             where collected), exact DECIMAL thresholds, populations;
--   summarise overall-stratum rates (ITT and evaluable, end of induction and ever) with
--             Wilson CIs; Kaplan-Meier (log-log CIs), median + Brookmeyer-Crowley CI,
--             landmarks, responder quantiles and sessions to response.
-- Not done here (the pipeline does them too, all small): other strata, suppression,
-- attrition, indication tests, data-quality mart, Data Docs, the HTML report.
--
-- Placeholders filled in by floor.py: {{SRC:<table>}} (the file readers of that table),
-- {{ID_PATTERN}}, {{AGE_OVER_89}}. Phases start at lines "-- @phase" followed by the phase name.

-- @phase read
SET preserve_insertion_order = false;
CREATE TEMP TABLE raw_patients AS {{SRC:patients}};
CREATE TEMP TABLE raw_treatments AS {{SRC:treatments}};
CREATE TEMP TABLE raw_assessments AS {{SRC:assessments}};
CREATE TEMP TABLE raw_adverse_events AS {{SRC:adverse_events}};
CREATE TEMP TABLE manifests AS {{SRC:manifest}};

-- @phase validate
-- de-identification and manifest counts: any hit blocks the whole export
CREATE TEMP TABLE blocked AS
WITH id_hits AS (
    SELECT export_id FROM raw_patients
    WHERE regexp_matches(patient_id, '{{ID_PATTERN}}') OR regexp_matches(site_id, '{{ID_PATTERN}}')
       OR regexp_matches(indication, '{{ID_PATTERN}}') OR regexp_matches(sex, '{{ID_PATTERN}}')
       OR regexp_matches(age_band, '{{ID_PATTERN}}') OR regexp_matches(age_band, '{{AGE_OVER_89}}')
    UNION ALL
    SELECT export_id FROM raw_treatments
    WHERE regexp_matches(patient_id, '{{ID_PATTERN}}') OR regexp_matches(day, '{{ID_PATTERN}}')
       OR regexp_matches(session_number, '{{ID_PATTERN}}') OR regexp_matches(route, '{{ID_PATTERN}}')
       OR regexp_matches(dose_mg, '{{ID_PATTERN}}') OR regexp_matches(dose_mg_per_kg, '{{ID_PATTERN}}')
       OR regexp_matches(duration_min, '{{ID_PATTERN}}')
    UNION ALL
    SELECT export_id FROM raw_assessments
    WHERE regexp_matches(patient_id, '{{ID_PATTERN}}') OR regexp_matches(instrument, '{{ID_PATTERN}}')
       OR regexp_matches(day, '{{ID_PATTERN}}') OR regexp_matches(score, '{{ID_PATTERN}}')
    UNION ALL
    SELECT export_id FROM raw_adverse_events
    WHERE regexp_matches(patient_id, '{{ID_PATTERN}}') OR regexp_matches(day, '{{ID_PATTERN}}')
       OR regexp_matches(event, '{{ID_PATTERN}}') OR regexp_matches(severity, '{{ID_PATTERN}}')
       OR regexp_matches(serious, '{{ID_PATTERN}}')
),
read_counts AS (
    SELECT export_id, 'patients' AS tbl, count(*) AS n FROM raw_patients GROUP BY ALL
    UNION ALL SELECT export_id, 'treatments', count(*) FROM raw_treatments GROUP BY ALL
    UNION ALL SELECT export_id, 'assessments', count(*) FROM raw_assessments GROUP BY ALL
    UNION ALL SELECT export_id, 'adverse_events', count(*) FROM raw_adverse_events GROUP BY ALL
),
manifest_faults AS (
    SELECT m.export_id FROM manifests AS m
    LEFT JOIN read_counts AS r ON r.export_id = m.export_id AND r.tbl = m.tbl
    WHERE m.n IS DISTINCT FROM coalesce(r.n, 0)
)
SELECT DISTINCT export_id FROM (SELECT * FROM id_hits UNION ALL SELECT * FROM manifest_faults);

-- Per table: row rules, then one GROUP BY export x natural key: exact duplicates collapse to
-- one row, and a key whose copies differ (compared by a 64-bit hash of the other columns) is
-- a conflict and quarantined whole. Blocked exports contribute nothing.
CREATE TEMP TABLE acc_patients AS
SELECT export_id, patient_id, any_value(site_id) AS site_id,
       any_value(indication) AS indication, any_value(sex) AS sex,
       any_value(age_band) AS age_band
FROM raw_patients
WHERE export_id NOT IN (SELECT export_id FROM blocked)
  AND regexp_full_match(patient_id, '[A-Za-z0-9_-]{6,64}')
  AND regexp_full_match(site_id, '[A-Za-z0-9_-]{1,32}')
  AND indication IN ('MDD', 'GAD', 'SAD', 'OCD', 'CRPS', 'DPN')
  AND sex IN ('F', 'M', 'X', 'U')
  AND age_band IN ('18-24', '25-34', '35-44', '45-54', '55-64', '65-74', '75-89', '90+')
GROUP BY export_id, patient_id
HAVING min(hash(site_id, indication, sex, age_band)) = max(hash(site_id, indication, sex, age_band));

-- a patient_id is known from the first export (by name) that accepted it
CREATE TEMP TABLE known_from AS
SELECT patient_id, min(export_id) AS first_export FROM acc_patients GROUP BY patient_id;

CREATE TEMP TABLE acc_treatments AS
WITH t AS (
    SELECT *, TRY_CAST(day AS DOUBLE) AS day_n, TRY_CAST(session_number AS DOUBLE) AS sn_n,
           TRY_CAST(dose_mg AS DOUBLE) AS dose_n, TRY_CAST(dose_mg_per_kg AS DOUBLE) AS mgkg_n,
           TRY_CAST(duration_min AS DOUBLE) AS dur_n,
           -- session order: above every number given on an earlier day (same export)
           max(TRY_CAST(session_number AS DOUBLE)) OVER (
               PARTITION BY export_id, patient_id ORDER BY TRY_CAST(day AS DOUBLE)
               RANGE BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW EXCLUDE GROUP) AS before_max
    FROM raw_treatments
    WHERE export_id NOT IN (SELECT export_id FROM blocked)
),
ok AS (
    SELECT t.export_id, t.patient_id, CAST(t.day AS BIGINT) AS day,
           CAST(t.session_number AS BIGINT) AS session_number, t.route,
           t.dose_n AS dose_mg, t.mgkg_n AS dose_mg_per_kg,
           CAST(t.duration_min AS BIGINT) AS duration_min
    FROM t
    LEFT JOIN known_from AS k USING (patient_id)
    WHERE regexp_full_match(t.patient_id, '[A-Za-z0-9_-]{6,64}')
      AND regexp_full_match(t.day, '-?[0-9]+') AND t.day_n BETWEEN 0 AND 730
      AND regexp_full_match(t.session_number, '-?[0-9]+') AND t.sn_n BETWEEN 1 AND 10000
      AND t.route IN ('IV', 'IM', 'IN', 'SC', 'ORAL', 'SL', 'TOPICAL')
      AND (t.dose_mg IS NULL OR (regexp_full_match(t.dose_mg,
            '-?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][-+]?[0-9]+)?') AND t.dose_n > 0 AND t.dose_n <= 5000))
      AND (t.dose_mg_per_kg IS NULL OR (regexp_full_match(t.dose_mg_per_kg,
            '-?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][-+]?[0-9]+)?') AND t.mgkg_n > 0 AND t.mgkg_n <= 40))
      AND (t.duration_min IS NULL OR (regexp_full_match(t.duration_min, '-?[0-9]+')
            AND t.dur_n BETWEEN 1 AND 1440))
      AND k.first_export <= t.export_id
      AND (t.before_max IS NULL OR t.sn_n > t.before_max)
)
SELECT export_id, patient_id, day, session_number, any_value(route) AS route,
       any_value(dose_mg) AS dose_mg, any_value(dose_mg_per_kg) AS dose_mg_per_kg,
       any_value(duration_min) AS duration_min
FROM ok
GROUP BY export_id, patient_id, day, session_number
HAVING min(hash(route, dose_mg, dose_mg_per_kg, duration_min))
     = max(hash(route, dose_mg, dose_mg_per_kg, duration_min));

CREATE TEMP TABLE acc_assessments AS
WITH a AS (
    SELECT *, TRY_CAST(day AS DOUBLE) AS day_n, TRY_CAST(score AS DOUBLE) AS score_n
    FROM raw_assessments
    WHERE export_id NOT IN (SELECT export_id FROM blocked)
),
ok AS (
    SELECT a.export_id, a.patient_id, a.instrument, CAST(a.day AS BIGINT) AS day,
           CAST(a.score AS DECIMAL(18, 1)) AS score
    FROM a
    LEFT JOIN known_from AS k USING (patient_id)
    WHERE regexp_full_match(a.patient_id, '[A-Za-z0-9_-]{6,64}')
      AND regexp_full_match(a.day, '-?[0-9]+') AND a.day_n BETWEEN -90 AND 730
      AND regexp_full_match(a.score, '-?[0-9]+(\.[0-9]+)?')
      AND CASE a.instrument
            WHEN 'MADRS' THEN a.score_n BETWEEN 0 AND 60 AND regexp_full_match(a.score, '-?[0-9]+(\.0+)?')
            WHEN 'PHQ9' THEN a.score_n BETWEEN 0 AND 27 AND regexp_full_match(a.score, '-?[0-9]+(\.0+)?')
            WHEN 'GAD7' THEN a.score_n BETWEEN 0 AND 21 AND regexp_full_match(a.score, '-?[0-9]+(\.0+)?')
            WHEN 'LSAS' THEN a.score_n BETWEEN 0 AND 144 AND regexp_full_match(a.score, '-?[0-9]+(\.0+)?')
            WHEN 'YBOCS' THEN a.score_n BETWEEN 0 AND 40 AND regexp_full_match(a.score, '-?[0-9]+(\.0+)?')
            WHEN 'NRS_PAIN' THEN a.score_n BETWEEN 0 AND 10
                 AND regexp_full_match(a.score, '-?[0-9]+(\.[0-9]{1,1}0*)?')
          END
      AND k.first_export <= a.export_id
)
SELECT export_id, patient_id, instrument, day, any_value(score) AS score
FROM ok
GROUP BY export_id, patient_id, instrument, day
HAVING min(score) = max(score);

CREATE TEMP TABLE acc_adverse_events AS
WITH ok AS (
    SELECT e.export_id, e.patient_id, CAST(e.day AS BIGINT) AS day, e.event, e.severity,
           e.serious IN ('true', 'TRUE', 'True', '1') AS serious
    FROM raw_adverse_events AS e
    LEFT JOIN known_from AS k USING (patient_id)
    WHERE e.export_id NOT IN (SELECT export_id FROM blocked)
      AND regexp_full_match(e.patient_id, '[A-Za-z0-9_-]{6,64}')
      AND regexp_full_match(e.day, '-?[0-9]+') AND TRY_CAST(e.day AS DOUBLE) BETWEEN 0 AND 730
      AND e.event IN ('DISSOCIATION', 'HYPERTENSION', 'NAUSEA_VOMITING', 'SEDATION',
                      'ANXIETY_AGITATION', 'HEADACHE', 'DIZZINESS', 'URINARY', 'OTHER')
      AND e.severity IN ('MILD', 'MODERATE', 'SEVERE')
      AND e.serious IN ('true', 'false', 'TRUE', 'FALSE', 'True', 'False', '1', '0')
      AND k.first_export <= e.export_id
)
SELECT export_id, patient_id, day, event, any_value(severity) AS severity,
       any_value(serious) AS serious
FROM ok
GROUP BY export_id, patient_id, day, event
HAVING min(hash(severity, serious)) = max(hash(severity, serious));

-- supersession: per natural key, the accepted row of the export that sorts last
CREATE TEMP TABLE cur_patients AS
SELECT patient_id, arg_max(indication, export_id) AS indication FROM acc_patients GROUP BY ALL;
CREATE TEMP TABLE cur_treatments AS
SELECT patient_id, day, session_number, arg_max(route, export_id) AS route,
       arg_max_null(dose_mg, export_id) AS dose_mg,
       arg_max_null(dose_mg_per_kg, export_id) AS dose_mg_per_kg,
       arg_max_null(duration_min, export_id) AS duration_min
FROM acc_treatments GROUP BY ALL;
CREATE TEMP TABLE cur_assessments AS
SELECT patient_id, instrument, day, arg_max(score, export_id) AS score
FROM acc_assessments GROUP BY ALL;
CREATE TEMP TABLE cur_adverse_events AS
SELECT patient_id, day, event, arg_max(severity, export_id) AS severity,
       arg_max(serious, export_id) AS serious
FROM acc_adverse_events GROUP BY ALL;

-- @phase derive
CREATE TEMP TABLE thresholds AS
SELECT * FROM (VALUES
    ('MADRS', 50.0, 10.0, 20.0), ('PHQ9', 50.0, 4.0, 10.0), ('GAD7', 50.0, 4.0, 10.0),
    ('LSAS', 30.0, 30.0, 60.0), ('YBOCS', 35.0, 12.0, 16.0), ('NRS_PAIN', 30.0, 3.0, 4.0)
) AS v(instrument, pct, remission_max, min_baseline);
CREATE TEMP TABLE primary_instrument AS
SELECT * FROM (VALUES ('MDD', 'MADRS'), ('GAD', 'GAD7'), ('SAD', 'LSAS'), ('OCD', 'YBOCS'),
                      ('CRPS', 'NRS_PAIN'), ('DPN', 'NRS_PAIN')) AS v(indication, instrument);

CREATE TEMP TABLE outcomes AS
WITH th AS (
    SELECT instrument, CAST(pct AS DECIMAL(9, 4)) AS pct,
           CAST(remission_max AS DECIMAL(9, 4)) AS remission_max,
           CAST(min_baseline AS DECIMAL(9, 4)) AS min_baseline
    FROM thresholds
),
pairs AS (
    SELECT p.patient_id, p.indication, pi.instrument
    FROM cur_patients AS p JOIN primary_instrument AS pi USING (indication)
    UNION ALL
    SELECT p.patient_id, p.indication, 'PHQ9'
    FROM cur_patients AS p
    WHERE p.patient_id IN (SELECT patient_id FROM cur_assessments WHERE instrument = 'PHQ9')
      AND NOT EXISTS (SELECT 1 FROM primary_instrument AS pi
                      WHERE pi.indication = p.indication AND pi.instrument = 'PHQ9')
),
n_admin AS (SELECT patient_id, count(*) AS n FROM cur_treatments GROUP BY patient_id),
baseline AS (
    SELECT patient_id, instrument, arg_max(score, day) AS score FROM cur_assessments
    WHERE day BETWEEN -14 AND 0 GROUP BY ALL
),
endpoint AS (
    SELECT patient_id, instrument, arg_max(score, day) AS score FROM cur_assessments
    WHERE day BETWEEN 21 AND 35 GROUP BY ALL
),
followup AS (
    SELECT a.patient_id, a.instrument, max(a.day) AS last_day,
           bool_or(100 * (b.score - a.score) >= th.pct * b.score AND b.score > 0) AS any_response,
           bool_or(a.score <= th.remission_max) AS any_remission,
           min(a.day) FILTER (WHERE 100 * (b.score - a.score) >= th.pct * b.score
                              AND b.score > 0) AS first_response_day
    FROM cur_assessments AS a
    JOIN th USING (instrument)
    LEFT JOIN baseline AS b USING (patient_id, instrument)
    WHERE a.day BETWEEN 1 AND 84
    GROUP BY ALL
)
SELECT pr.indication, pr.instrument, pr.patient_id,
       (b.score > 0 AND b.score >= th.min_baseline AND coalesce(n.n, 0) >= 1) IS TRUE AS itt,
       e.score IS NOT NULL AS has_endpoint,
       100 * (b.score - e.score) >= th.pct * b.score AS endpoint_response,
       e.score <= th.remission_max AS endpoint_remission,
       f.last_day IS NOT NULL AS has_followup,
       f.any_response, f.any_remission, f.first_response_day,
       coalesce(f.first_response_day, f.last_day) AS ttr_day
FROM pairs AS pr
JOIN th USING (instrument)
LEFT JOIN n_admin AS n USING (patient_id)
LEFT JOIN baseline AS b USING (patient_id, instrument)
LEFT JOIN endpoint AS e USING (patient_id, instrument)
LEFT JOIN followup AS f USING (patient_id, instrument);

CREATE TEMP TABLE sessions_to_response AS
SELECT o.indication, o.instrument, o.patient_id, o.first_response_day,
       count(t.day) AS sessions
FROM outcomes AS o
LEFT JOIN cur_treatments AS t ON t.patient_id = o.patient_id AND t.day < o.first_response_day
WHERE o.itt AND o.has_followup AND o.first_response_day IS NOT NULL
GROUP BY ALL;

-- @phase summarise
CREATE TEMP TABLE rates AS
WITH c AS (
    SELECT indication, instrument,
           count(*) FILTER (WHERE itt) AS itt_n,
           count(*) FILTER (WHERE itt AND has_endpoint) AS eoi_n,
           count(*) FILTER (WHERE itt AND has_endpoint AND endpoint_response) AS eoi_resp,
           count(*) FILTER (WHERE itt AND has_endpoint AND endpoint_remission) AS eoi_rem,
           count(*) FILTER (WHERE itt AND has_followup) AS ever_n,
           count(*) FILTER (WHERE itt AND has_followup AND any_response) AS ever_resp,
           count(*) FILTER (WHERE itt AND has_followup AND any_remission) AS ever_rem
    FROM outcomes GROUP BY ALL
),
long AS (
    SELECT indication, instrument, 'end_of_induction' AS endpoint, 'ITT' AS population,
           itt_n AS n, eoi_resp AS k_resp, eoi_rem AS k_rem FROM c
    UNION ALL SELECT indication, instrument, 'end_of_induction', 'evaluable', eoi_n, eoi_resp, eoi_rem FROM c
    UNION ALL SELECT indication, instrument, 'ever', 'ITT', itt_n, ever_resp, ever_rem FROM c
    UNION ALL SELECT indication, instrument, 'ever', 'evaluable', ever_n, ever_resp, ever_rem FROM c
),
z AS (SELECT 1.959963984540054 AS z)
SELECT indication, instrument, endpoint, population, n AS n_patients,
       k_resp AS n_responders, k_rem AS n_remitters,
       CASE WHEN n > 0 THEN k_resp / n END AS response_rate,
       CASE WHEN n > 0 THEN CASE WHEN k_resp = 0 THEN 0.0 ELSE greatest(0.0,
           (k_resp + z*z/2) / (n + z*z) - z / (n + z*z) * sqrt(k_resp * (n - k_resp) / n + z*z/4)) END
       END AS response_ci_low,
       CASE WHEN n > 0 THEN CASE WHEN k_resp = n THEN 1.0 ELSE least(1.0,
           (k_resp + z*z/2) / (n + z*z) + z / (n + z*z) * sqrt(k_resp * (n - k_resp) / n + z*z/4)) END
       END AS response_ci_high,
       CASE WHEN n > 0 THEN k_rem / n END AS remission_rate
FROM long, z;

CREATE TEMP TABLE km_curve AS
WITH counts AS (
    SELECT indication, instrument, ttr_day AS day,
           count(*) FILTER (WHERE first_response_day IS NOT NULL) AS d,
           count(*) FILTER (WHERE first_response_day IS NULL) AS c
    FROM outcomes WHERE itt AND has_followup GROUP BY ALL
),
risk AS (
    SELECT *, sum(d + c) OVER (PARTITION BY indication, instrument) -
              coalesce(sum(d + c) OVER (PARTITION BY indication, instrument ORDER BY day
                                        ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0) AS n
    FROM counts
),
steps AS (
    SELECT *,
        bool_or(d = n) OVER w AS reached_zero,
        sum(CASE WHEN d < n THEN ln(1 - d / n) ELSE 0 END) OVER w AS log_s,
        sum(CASE WHEN d < n THEN d / (n * (n - d)) END) OVER w AS greenwood
    FROM risk
    WINDOW w AS (PARTITION BY indication, instrument ORDER BY day
                 ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)
),
z AS (SELECT 1.959963984540054 AS z)
SELECT indication, instrument, day, d, c, n,
       CASE WHEN reached_zero THEN 0.0 ELSE exp(log_s) END AS s,
       CASE WHEN NOT reached_zero AND log_s < 0
            THEN exp(-exp(ln(-log_s) + z * sqrt(greenwood) / abs(log_s))) END AS s_low,
       CASE WHEN NOT reached_zero AND log_s < 0
            THEN exp(-exp(ln(-log_s) - z * sqrt(greenwood) / abs(log_s))) END AS s_high
FROM steps, z;

CREATE TEMP TABLE km_summary AS
WITH med AS (
    SELECT indication, instrument,
           min(day) FILTER (WHERE s < 0.5 - 1e-12) AS t2,
           min(day) FILTER (WHERE s <= 0.5 + 1e-12) AS t1,
           min(day) FILTER (WHERE s_low < 0.5 - 1e-12) AS l2,
           min(day) FILTER (WHERE s_low <= 0.5 + 1e-12) AS l1,
           min(day) FILTER (WHERE s_high < 0.5 - 1e-12) AS h2,
           min(day) FILTER (WHERE s_high <= 0.5 + 1e-12) AS h1,
           sum(d + c) AS n_patients, sum(d) AS n_responders, sum(c) AS n_censored,
           max(day) AS max_followup_day,
           1 - coalesce(arg_max(s, day) FILTER (WHERE day <= 1), 1.0) AS cum1,
           1 - coalesce(arg_max(s, day) FILTER (WHERE day <= 7), 1.0) AS cum7,
           1 - coalesce(arg_max(s, day) FILTER (WHERE day <= 14), 1.0) AS cum14,
           1 - coalesce(arg_max(s, day) FILTER (WHERE day <= 28), 1.0) AS cum28,
           1 - coalesce(arg_max(s, day) FILTER (WHERE day <= 84), 1.0) AS cum84
    FROM km_curve GROUP BY ALL
),
resp AS (
    SELECT indication, instrument,
           quantile_cont(first_response_day, 0.25) AS q1,
           quantile_cont(first_response_day, 0.5) AS q2,
           quantile_cont(first_response_day, 0.75) AS q3,
           quantile_cont(sessions, 0.5) AS sessions_median
    FROM sessions_to_response GROUP BY ALL
)
SELECT m.indication, m.instrument, n_patients, n_responders, n_censored,
       CASE WHEN t2 = t1 THEN t2 ELSE (t1 + t2) / 2 END AS median_days,
       CASE WHEN l2 = l1 THEN l2 ELSE (l1 + l2) / 2 END AS median_ci_low,
       CASE WHEN h2 = h1 THEN h2 ELSE (h1 + h2) / 2 END AS median_ci_high,
       CASE WHEN 1 <= max_followup_day THEN cum1 END AS cum_response_d1,
       CASE WHEN 7 <= max_followup_day THEN cum7 END AS cum_response_d7,
       CASE WHEN 14 <= max_followup_day THEN cum14 END AS cum_response_d14,
       CASE WHEN 28 <= max_followup_day THEN cum28 END AS cum_response_d28,
       CASE WHEN 84 <= max_followup_day THEN cum84 END AS cum_response_d84,
       max_followup_day,
       r.q2 AS responders_median_days, r.q1 AS responders_q1_days, r.q3 AS responders_q3_days,
       r.sessions_median AS responders_median_sessions
FROM med AS m LEFT JOIN resp AS r USING (indication, instrument);
