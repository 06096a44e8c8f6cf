-- The platform's objects in every database of an instance: made in the image's
-- template cluster (template0, template1 and the tenant's database), so that every
-- database a tenant has or creates carries them. Owned by the platform's superuser;
-- the tenant, who owns its databases but is no superuser, cannot change or drop them.

CREATE SCHEMA IF NOT EXISTS dbaas_platform;
REVOKE ALL ON SCHEMA dbaas_platform FROM PUBLIC;

-- Which extensions a tenant may create is its plan's choice: the host writes the
-- list into the instance's configuration (dbaas.allowed_extensions in instance.conf).
-- It is read from the configuration file itself, not from the setting, which a
-- session could change with SET.
CREATE OR REPLACE FUNCTION dbaas_platform.check_extensions() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    allowed text[];
    created record;
BEGIN
    IF (SELECT rolsuper FROM pg_roles WHERE rolname = session_user) THEN
        RETURN;  -- the platform's own work (pg_amcheck --install-missing)
    END IF;
    SELECT string_to_array(replace(setting, ' ', ''), ',') INTO allowed
      FROM pg_file_settings
     WHERE name = 'dbaas.allowed_extensions' AND error IS NULL
     ORDER BY seqno DESC LIMIT 1;
    FOR created IN
        SELECT e.extname FROM pg_event_trigger_ddl_commands() AS c
          JOIN pg_extension AS e ON e.oid = c.objid
         WHERE c.object_type = 'extension'
    LOOP
        IF allowed IS NULL OR NOT created.extname = ANY (allowed) THEN
            RAISE EXCEPTION 'extension "%" is not available on this database''s plan',
                created.extname
                USING ERRCODE = 'insufficient_privilege',
                      HINT = 'Available: ' || coalesce(array_to_string(allowed, ', '), 'none') || '.';
        END IF;
    END LOOP;
END
$$;
REVOKE ALL ON FUNCTION dbaas_platform.check_extensions() FROM PUBLIC;

DROP EVENT TRIGGER IF EXISTS dbaas_check_extensions;
CREATE EVENT TRIGGER dbaas_check_extensions ON ddl_command_end
    WHEN TAG IN ('CREATE EXTENSION')
    EXECUTE FUNCTION dbaas_platform.check_extensions();
