/*
 * dbaas: the platform's module inside every tenant's PostgreSQL server
 * (shared_preload_libraries = 'dbaas', set by the runtime in instance.conf).
 *
 * It does two things the server cannot be configured to do:
 *
 * 1. Databases a tenant creates are reachable through the host's pooler at once.
 *    CREATE DATABASE, DROP DATABASE and ALTER DATABASE ... RENAME ask the host's
 *    registrar (dbaas.registrar: a unix socket the sandbox binds into the
 *    instance, or "tcp:<IPv4 address>:<port>", which a microvm's QEMU forwards
 *    to the same socket on the host) before and after they run; the registrar decides whether the name may be used (free on
 *    the host, within the plan's number of databases) and adds or removes the
 *    pooler's entries. The statement fails with the registrar's message if it
 *    says no, or if it cannot be reached.
 *
 * 2. Over its plan's storage limit a tenant's server refuses what adds data
 *    (INSERT, UPDATE, MERGE, COPY FROM, CREATE TABLE / INDEX / DATABASE, ...)
 *    and allows what reads or frees it (SELECT, DELETE, TRUNCATE, DROP, VACUUM).
 *    The host sets dbaas.storage_full in the configuration file and reloads it,
 *    so sessions already open are held too; the owner cannot change it.
 *
 * 3. work_mem and maintenance_work_mem cannot be set above the plan's ceiling
 *    (dbaas.work_mem_max) by the owner: SET, set_config(), ALTER ... SET or at
 *    connect time. The memory limits of the instance's cgroup and address space
 *    stay the real bound; this turns a query that would run out of memory into a
 *    clear error first.
 *
 * 4. statement_timeout, lock_timeout, idle_in_transaction_session_timeout,
 *    search_path, default_transaction_isolation and default_transaction_read_only
 *    are reported to the client like client_encoding is (GUC_REPORT), so that a
 *    pooler can track them per client and apply them on whichever server
 *    connection the client gets: a client that sets them at connect time gets
 *    them, in session and in transaction pooling alike.
 */
#include "postgres.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include "executor/executor.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "nodes/parsenodes.h"
#include "tcop/utility.h"
#include "utils/guc.h"
#include "utils/guc_tables.h"

PG_MODULE_MAGIC;

void		_PG_init(void);

static ProcessUtility_hook_type prev_ProcessUtility = NULL;
static ExecutorStart_hook_type prev_ExecutorStart = NULL;
static char *registrar_path = NULL;
static char *storage_full = NULL;	/* why writes are refused; empty: they are not */
static int	work_mem_max = 0;		/* kB; 0: no ceiling */

/* The memory settings held under work_mem_max, and their own checks. */
static const char *const capped_settings[] = {"work_mem", "maintenance_work_mem"};
static GucIntCheckHook capped_previous_checks[lengthof(capped_settings)];
static char *allowed_extensions = NULL;

#define REGISTRAR_TIMEOUT_SECONDS 15
#define REGISTRAR_CONNECT_ATTEMPTS 200	/* 50 ms apart: 10 s */

/* GUCs a pooler should carry per client: reported, so that it can. */
static const char *const reported_settings[] = {
	"statement_timeout",
	"lock_timeout",
	"idle_in_transaction_session_timeout",
	"search_path",
	"default_transaction_isolation",
	"default_transaction_read_only",
};

static struct config_generic *
setting_record(const char *name)
{
#if PG_VERSION_NUM >= 160000
	return find_option(name, false, true, WARNING);
#else
	struct config_generic **records = get_guc_variables();
	int			count = GetNumConfigOptions();

	for (int i = 0; i < count; i++)
		if (strcmp(records[i]->name, name) == 0)
			return records[i];
	return NULL;
#endif
}

/* Is this value the owner's doing (not the server's configuration)? */
static bool
set_by_the_owner(GucSource source)
{
	switch (source)
	{
		case PGC_S_DATABASE:
		case PGC_S_USER:
		case PGC_S_DATABASE_USER:
		case PGC_S_CLIENT:
		case PGC_S_TEST:
		case PGC_S_SESSION:
			return true;
		default:
			return false;
	}
}

static bool
check_capped(int index, int *newval, void **extra, GucSource source)
{
	if (capped_previous_checks[index] != NULL
		&& !capped_previous_checks[index] (newval, extra, source))
		return false;
	if (work_mem_max > 0 && *newval > work_mem_max && set_by_the_owner(source))
	{
		GUC_check_errdetail("This database's plan allows at most %d MB.", work_mem_max / 1024);
		return false;
	}
	return true;
}

static bool
check_work_mem(int *newval, void **extra, GucSource source)
{
	return check_capped(0, newval, extra, source);
}

static bool
check_maintenance_work_mem(int *newval, void **extra, GucSource source)
{
	return check_capped(1, newval, extra, source);
}

static void
cap_settings(void)
{
	GucIntCheckHook checks[lengthof(capped_settings)] = {check_work_mem, check_maintenance_work_mem};

	for (int i = 0; i < (int) lengthof(capped_settings); i++)
	{
		struct config_generic *record = setting_record(capped_settings[i]);

		if (record == NULL || record->vartype != PGC_INT)
			continue;
		capped_previous_checks[i] = ((struct config_int *) record)->check_hook;
		((struct config_int *) record)->check_hook = checks[i];
	}
}

/*
 * Where dbaas.registrar says the registrar is, as a socket address; NULL when it
 * is understood, else the message to give the user.
 */
static char *
registrar_address(struct sockaddr_storage *addr, socklen_t *addrlen)
{
	memset(addr, 0, sizeof(*addr));
	if (registrar_path == NULL || registrar_path[0] == '\0')
		return pstrdup("this server has no registrar configured (dbaas.registrar)");
	if (strncmp(registrar_path, "tcp:", 4) == 0)
	{
		struct sockaddr_in *in = (struct sockaddr_in *) addr;
		const char *host = registrar_path + 4;
		const char *colon = strrchr(host, ':');
		char		address[INET_ADDRSTRLEN];
		char	   *end;
		long		port;

		if (colon == NULL || colon - host >= (long) sizeof(address))
			return pstrdup("dbaas.registrar: expected tcp:<IPv4 address>:<port>");
		memcpy(address, host, colon - host);
		address[colon - host] = '\0';
		port = strtol(colon + 1, &end, 10);
		if (*end != '\0' || port <= 0 || port > 65535 ||
			inet_pton(AF_INET, address, &in->sin_addr) != 1)
			return pstrdup("dbaas.registrar: expected tcp:<IPv4 address>:<port>");
		in->sin_family = AF_INET;
		in->sin_port = htons((uint16) port);
		*addrlen = sizeof(*in);
		return NULL;
	}
	else
	{
		struct sockaddr_un *un = (struct sockaddr_un *) addr;

		if (strlen(registrar_path) >= sizeof(un->sun_path))
			return pstrdup("the registrar's socket path is too long");
		un->sun_family = AF_UNIX;
		strlcpy(un->sun_path, registrar_path, sizeof(un->sun_path));
		*addrlen = sizeof(*un);
		return NULL;
	}
}

/*
 * One request to the registrar: "<verb> <name>\n", answered by "ok\n" or
 * "error <message>\n". Returns NULL when it said ok, else the message to give
 * the user.
 */
static char *
registrar_ask(const char *verb, const char *name)
{
	struct sockaddr_storage addr;
	socklen_t	addrlen = 0;
	struct timeval timeout = {REGISTRAR_TIMEOUT_SECONDS, 0};
	char		request[NAMEDATALEN * 2 + 32];
	char		reply[1024];
	char	   *unusable;
	int			fd;
	int			len;
	ssize_t		got = 0;

	if ((unusable = registrar_address(&addr, &addrlen)) != NULL)
		return unusable;

	/*
	 * The registrar listens a moment after a new instance starts (and again a
	 * moment after it restarts): wait for it rather than fail.
	 */
	for (int attempt = 0;; attempt++)
	{
		fd = socket(addr.ss_family, SOCK_STREAM, 0);
		if (fd < 0)
			return psprintf("could not reach the platform's registrar: %m");
		if (connect(fd, (struct sockaddr *) &addr, addrlen) == 0)
			break;
		close(fd);
		if (attempt >= REGISTRAR_CONNECT_ATTEMPTS)
			return pstrdup("the platform cannot register databases right now; try again in a moment");
		pg_usleep(50 * 1000L);
		CHECK_FOR_INTERRUPTS();
	}
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof(timeout));
	len = snprintf(request, sizeof(request), "%s %s\n", verb, name);
	/* One line: what is not printable ASCII in the name (a newline, say) is sent
	 * as "?", which the registrar refuses like any other name it cannot route. */
	for (char *c = request + strlen(verb) + 1; c < request + len - 1; c++)
		if (*c < ' ' || *c > '~')
			*c = '?';
	if (write(fd, request, len) != len)
	{
		close(fd);
		return pstrdup("the platform's registrar did not take the request; try again");
	}
	while (got < (ssize_t) sizeof(reply) - 1)
	{
		ssize_t		n = read(fd, reply + got, sizeof(reply) - 1 - got);

		if (n <= 0)
			break;
		got += n;
		if (memchr(reply, '\n', got) != NULL)
			break;
	}
	close(fd);
	reply[got] = '\0';
	if (strcmp(reply, "ok\n") == 0)
		return NULL;
	if (strncmp(reply, "error ", 6) == 0)
	{
		char	   *end = strchr(reply, '\n');

		if (end != NULL)
			*end = '\0';
		return pstrdup(reply + 6);
	}
	return pstrdup("the platform's registrar did not answer; try again");
}

static void
registrar_require(const char *verb, const char *name)
{
	char	   *refusal = registrar_ask(verb, name);

	if (refusal != NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("%s", refusal)));
}

/* Best effort, on the way out of a failed statement: never throws. */
static void
registrar_tell(const char *verb, const char *name)
{
	char	   *refusal = registrar_ask(verb, name);

	if (refusal != NULL)
		elog(LOG, "dbaas: registrar refused \"%s %s\": %s", verb, name, refusal);
}

static bool
storage_is_full(void)
{
	return storage_full != NULL && storage_full[0] != '\0' && !superuser();
}

static void
refuse_for_storage(void)
{
	ereport(ERROR,
			(errcode(ERRCODE_DISK_FULL),
			 errmsg("%s: writes are refused until there is room", storage_full),
			 errhint("DELETE, TRUNCATE or DROP data to make room; writes are allowed again "
					 "within a minute of being back under the limit.")));
}

/* Statements that add data other than through the executor. */
static bool
adds_data(Node *parsetree)
{
	switch (nodeTag(parsetree))
	{
		case T_CopyStmt:
			return ((CopyStmt *) parsetree)->is_from;
		case T_CreateStmt:
		case T_CreateTableAsStmt:
		case T_IndexStmt:
		case T_RefreshMatViewStmt:
		case T_CreatedbStmt:
		case T_CreateExtensionStmt:
		case T_ClusterStmt:
			return true;
		default:
			return false;
	}
}

static void
dbaas_ExecutorStart(QueryDesc *queryDesc, int eflags)
{
	/*
	 * INSERT, UPDATE and MERGE add data; so may a data-modifying WITH (refused
	 * whole: a DELETE on its own is the way to make room).
	 */
	if (storage_is_full() && !(eflags & EXEC_FLAG_EXPLAIN_ONLY)
		&& (queryDesc->operation == CMD_INSERT || queryDesc->operation == CMD_UPDATE
			|| queryDesc->operation == CMD_MERGE || queryDesc->plannedstmt->hasModifyingCTE))
		refuse_for_storage();
	if (prev_ExecutorStart)
		prev_ExecutorStart(queryDesc, eflags);
	else
		standard_ExecutorStart(queryDesc, eflags);
}

static void
dbaas_ProcessUtility(PlannedStmt *pstmt, const char *queryString, bool readOnlyTree,
					 ProcessUtilityContext context, ParamListInfo params,
					 QueryEnvironment *queryEnv, DestReceiver *dest, QueryCompletion *qc)
{
	Node	   *parsetree = pstmt->utilityStmt;
	const char *created = NULL;		/* a name that appears */
	const char *dropped = NULL;		/* a name that goes */

	if (storage_is_full() && adds_data(parsetree))
		refuse_for_storage();

	/* The platform's own superuser (backups, checks) is not asked about. */
	if (!superuser())
	{
		if (IsA(parsetree, CreatedbStmt))
			created = ((CreatedbStmt *) parsetree)->dbname;
		else if (IsA(parsetree, DropdbStmt))
			dropped = ((DropdbStmt *) parsetree)->dbname;
		else if (IsA(parsetree, RenameStmt)
				 && ((RenameStmt *) parsetree)->renameType == OBJECT_DATABASE)
		{
			created = ((RenameStmt *) parsetree)->newname;
			dropped = ((RenameStmt *) parsetree)->subname;
		}
	}

	/* Before: claim the new name, and let the pooler let go of the old one. */
	if (created != NULL)
		registrar_require("reserve", created);
	if (dropped != NULL)
	{
		char	   *refusal = registrar_ask("dropping", dropped);

		if (refusal != NULL)
		{
			if (created != NULL)
				registrar_tell("release", created);
			ereport(ERROR,
					(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
					 errmsg("%s", refusal)));
		}
	}

	PG_TRY();
	{
		if (prev_ProcessUtility)
			prev_ProcessUtility(pstmt, queryString, readOnlyTree, context, params,
								queryEnv, dest, qc);
		else
			standard_ProcessUtility(pstmt, queryString, readOnlyTree, context, params,
									queryEnv, dest, qc);
	}
	PG_CATCH();
	{
		/* It did not happen: give the names back as they were. */
		if (created != NULL)
			registrar_tell("release", created);
		if (dropped != NULL)
			registrar_tell("created", dropped);
		PG_RE_THROW();
	}
	PG_END_TRY();

	/*
	 * After: the new name is routed before the client hears CREATE DATABASE.
	 * (The statement commits right after this; a client that connects on
	 * hearing the answer finds both the database and its pooler entries.)
	 */
	if (dropped != NULL)
		registrar_tell("dropped", dropped);
	if (created != NULL)
		registrar_require("created", created);
}

void
_PG_init(void)
{
	if (!process_shared_preload_libraries_in_progress)
		ereport(ERROR,
				(errmsg("dbaas must be loaded with shared_preload_libraries")));

	DefineCustomStringVariable("dbaas.registrar",
							   "The host's registrar of databases: a unix socket, or tcp:<address>:<port>.",
							   NULL,
							   &registrar_path,
							   "",
							   PGC_POSTMASTER,
							   0,
							   NULL, NULL, NULL);
	/* Read by the platform's CREATE EXTENSION check (platform.sql); only the
	 * configuration file sets it. */
	DefineCustomStringVariable("dbaas.allowed_extensions",
							   "Extensions the owner may create (the plan's list).",
							   NULL,
							   &allowed_extensions,
							   "",
							   PGC_SIGHUP,
							   0,
							   NULL, NULL, NULL);
	DefineCustomStringVariable("dbaas.storage_full",
							   "Why writes are refused (over the plan's storage limit); empty: "
							   "they are not.",
							   NULL,
							   &storage_full,
							   "",
							   PGC_SIGHUP,
							   0,
							   NULL, NULL, NULL);

	DefineCustomIntVariable("dbaas.work_mem_max",
							"Ceiling of work_mem and maintenance_work_mem for the owner.",
							NULL,
							&work_mem_max,
							0, 0, INT_MAX,
							PGC_SIGHUP,
							GUC_UNIT_KB,
							NULL, NULL, NULL);
	MarkGUCPrefixReserved("dbaas");	/* after every dbaas.* setting is defined */

	for (int i = 0; i < (int) lengthof(reported_settings); i++)
	{
		struct config_generic *record = setting_record(reported_settings[i]);

		if (record != NULL)
			record->flags |= GUC_REPORT;
	}
	cap_settings();

	prev_ProcessUtility = ProcessUtility_hook;
	ProcessUtility_hook = dbaas_ProcessUtility;
	prev_ExecutorStart = ExecutorStart_hook;
	ExecutorStart_hook = dbaas_ExecutorStart;
}
