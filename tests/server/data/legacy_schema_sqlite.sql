-- The schema vpnagent made with Base.metadata.create_all before migrations (commit 391fa67),
-- compiled for sqlite: databases of earlier installs look like this.
CREATE TABLE collaboration (
	id INTEGER NOT NULL,
	name VARCHAR(128) NOT NULL,
	PRIMARY KEY (id),
	UNIQUE (name)
);

CREATE TABLE organization (
	id INTEGER NOT NULL,
	name VARCHAR(128) NOT NULL,
	PRIMARY KEY (id),
	UNIQUE (name)
);

CREATE TABLE collaboration_member (
	collaboration_id INTEGER NOT NULL,
	organization_id INTEGER NOT NULL,
	PRIMARY KEY (collaboration_id, organization_id),
	FOREIGN KEY(collaboration_id) REFERENCES collaboration (id),
	FOREIGN KEY(organization_id) REFERENCES organization (id)
);

CREATE TABLE node (
	id INTEGER NOT NULL,
	name VARCHAR(128) NOT NULL,
	organization_id INTEGER NOT NULL,
	collaboration_id INTEGER NOT NULL,
	api_key_hash VARCHAR(64) NOT NULL,
	vpn_ip VARCHAR(45),
	removed_at DATETIME,
	PRIMARY KEY (id),
	UNIQUE (name),
	FOREIGN KEY(organization_id) REFERENCES organization (id),
	FOREIGN KEY(collaboration_id) REFERENCES collaboration (id),
	UNIQUE (api_key_hash),
	UNIQUE (vpn_ip)
);

CREATE TABLE task (
	id INTEGER NOT NULL,
	name VARCHAR(256) NOT NULL,
	image VARCHAR(512) NOT NULL,
	collaboration_id INTEGER NOT NULL,
	parent_id INTEGER,
	input JSON,
	created_at DATETIME NOT NULL,
	PRIMARY KEY (id),
	FOREIGN KEY(collaboration_id) REFERENCES collaboration (id),
	FOREIGN KEY(parent_id) REFERENCES task (id)
);

CREATE TABLE user (
	id INTEGER NOT NULL,
	name VARCHAR(128) NOT NULL,
	organization_id INTEGER NOT NULL,
	api_key_hash VARCHAR(64) NOT NULL,
	PRIMARY KEY (id),
	FOREIGN KEY(organization_id) REFERENCES organization (id),
	UNIQUE (api_key_hash)
);

CREATE TABLE certificate (
	id INTEGER NOT NULL,
	node_id INTEGER NOT NULL,
	serial VARCHAR(64) NOT NULL,
	not_after DATETIME NOT NULL,
	revoked_at DATETIME,
	PRIMARY KEY (id),
	FOREIGN KEY(node_id) REFERENCES node (id),
	UNIQUE (serial)
);

CREATE TABLE run (
	id INTEGER NOT NULL,
	task_id INTEGER NOT NULL,
	organization_id INTEGER NOT NULL,
	node_id INTEGER NOT NULL,
	status VARCHAR(16) NOT NULL,
	result JSON,
	log TEXT,
	started_at DATETIME,
	finished_at DATETIME,
	PRIMARY KEY (id),
	FOREIGN KEY(task_id) REFERENCES task (id),
	FOREIGN KEY(organization_id) REFERENCES organization (id),
	FOREIGN KEY(node_id) REFERENCES node (id)
);

CREATE TABLE port (
	id INTEGER NOT NULL,
	run_id INTEGER NOT NULL,
	port INTEGER NOT NULL,
	label VARCHAR(64),
	PRIMARY KEY (id),
	FOREIGN KEY(run_id) REFERENCES run (id)
);
