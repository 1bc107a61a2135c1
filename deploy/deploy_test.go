// Package deploy_test checks the deployment examples under deploy/: the
// Kubernetes manifests (parsed and checked field by field, since no
// schema-aware validator can fetch its schemas here), the systemd unit and
// the rekey.yaml files both ship (loaded with config.Load and validated by
// the real `rekey config validate`).
package deploy_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/rekeyhq/rekey/config"
	"github.com/rekeyhq/rekey/kms/localkms"
)

const (
	k8sDir      = "kubernetes"
	unitFile    = "systemd/rekey.service"
	unitConfig  = "systemd/rekey.yaml"
	rulesFile   = "prometheus/rekey-rules.yml"
	metricsPort = 9464
	wantExec    = "/usr/local/bin/rekey run --config /etc/rekey/rekey.yaml"
)

// knownKinds are the apiVersion/kind pairs the manifests may use.
var knownKinds = map[string]bool{
	"v1/Namespace":                                  true,
	"v1/ConfigMap":                                  true,
	"v1/Secret":                                     true,
	"v1/PersistentVolumeClaim":                      true,
	"v1/Service":                                    true,
	"apps/v1/Deployment":                            true,
	"policy/v1/PodDisruptionBudget":                 true,
	"monitoring.coreos.com/v1/ServiceMonitor":       true,
	"monitoring.coreos.com/v1/PodMonitor":           true,
	"monitoring.coreos.com/v1/PrometheusRule":       true,
	"kustomize.config.k8s.io/v1beta1/Kustomization": true,
}

var dns1123 = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)

// doc is one YAML document of a manifest file.
type doc struct {
	file string
	m    map[string]any
}

func (d doc) kind() string { return str(d.m, "kind") }
func (d doc) name() string { return str(d.m, "metadata", "name") }

// get follows keys (map keys, or list indexes as ints) through v.
func get(v any, path ...any) any {
	for _, p := range path {
		switch k := p.(type) {
		case string:
			m, ok := v.(map[string]any)
			if !ok {
				return nil
			}
			v = m[k]
		case int:
			l, ok := v.([]any)
			if !ok || k >= len(l) {
				return nil
			}
			v = l[k]
		}
	}
	return v
}

func str(v any, path ...any) string { s, _ := get(v, path...).(string); return s }

func list(v any, path ...any) []any { l, _ := get(v, path...).([]any); return l }

func toInt(v any) (int, bool) {
	i, ok := v.(int)
	return i, ok
}

// loadManifests parses every YAML document of every file in dir.
func loadManifests(t *testing.T, dir string) []doc {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no manifests in %s (err %v)", dir, err)
	}
	var docs []doc
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		dec := yaml.NewDecoder(bytes.NewReader(data))
		for n := 0; ; n++ {
			var m map[string]any
			err := dec.Decode(&m)
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatalf("%s: document %d: %v", f, n+1, err)
			}
			if m == nil {
				continue
			}
			docs = append(docs, doc{file: filepath.Base(f), m: m})
		}
	}
	return docs
}

func only(t *testing.T, docs []doc, kind string) doc {
	t.Helper()
	var found []doc
	for _, d := range docs {
		if d.kind() == kind {
			found = append(found, d)
		}
	}
	if len(found) != 1 {
		t.Fatalf("want exactly one %s among the manifests, found %d", kind, len(found))
	}
	return found[0]
}

// checkKinds: every document has a known apiVersion/kind and a valid name;
// no two objects of one kind share a name.
func checkKinds(docs []doc) []string {
	var errs []string
	seen := map[string]string{}
	for _, d := range docs {
		av := str(d.m, "apiVersion") + "/" + d.kind()
		if !knownKinds[av] {
			errs = append(errs, fmt.Sprintf("%s: unknown apiVersion/kind %s", d.file, av))
		}
		if d.kind() == "Kustomization" {
			continue
		}
		if !dns1123.MatchString(d.name()) || len(d.name()) > 63 {
			errs = append(errs, fmt.Sprintf("%s: %s has an invalid metadata.name %q", d.file, d.kind(), d.name()))
		}
		id := d.kind() + "/" + d.name()
		if prev, dup := seen[id]; dup {
			errs = append(errs, fmt.Sprintf("%s: %s is also defined in %s", d.file, id, prev))
		}
		seen[id] = d.file
	}
	return errs
}

// checkKustomization: the kustomization lists every other manifest file,
// and only files that exist.
func checkKustomization(docs []doc) []string {
	var errs []string
	var k doc
	files := map[string]bool{}
	for _, d := range docs {
		if d.kind() == "Kustomization" {
			k = d
		} else {
			files[d.file] = true
		}
	}
	if k.m == nil {
		return []string{"no kustomization.yaml"}
	}
	listed := map[string]bool{}
	for _, r := range list(k.m, "resources") {
		s, _ := r.(string)
		listed[s] = true
		if !files[s] {
			errs = append(errs, fmt.Sprintf("kustomization.yaml lists %q, which is not a manifest in %s", s, k8sDir))
		}
	}
	for f := range files {
		if !listed[f] {
			errs = append(errs, fmt.Sprintf("%s is not listed in kustomization.yaml resources", f))
		}
	}
	return errs
}

// selects reports whether every selector label is among labels.
func selects(selector, labels any) bool {
	sel, _ := selector.(map[string]any)
	lab, _ := labels.(map[string]any)
	if len(sel) == 0 {
		return false
	}
	for k, v := range sel {
		if lab[k] != v {
			return false
		}
	}
	return true
}

// checkDeployment checks the Deployment against the brief: 3 replicas,
// probes, port, args, worker id, security, grace period and the objects it
// refers to.
func checkDeployment(docs []doc, leaseTTL time.Duration) []string {
	var errs []string
	fail := func(format string, args ...any) { errs = append(errs, fmt.Sprintf(format, args...)) }
	var dep doc
	for _, d := range docs {
		if d.kind() == "Deployment" {
			dep = d
		}
	}
	if dep.m == nil {
		return []string{"no Deployment"}
	}
	if r, _ := toInt(get(dep.m, "spec", "replicas")); r != 3 {
		fail("Deployment spec.replicas is %v, want 3", get(dep.m, "spec", "replicas"))
	}
	podLabels := get(dep.m, "spec", "template", "metadata", "labels")
	if !selects(get(dep.m, "spec", "selector", "matchLabels"), podLabels) {
		fail("Deployment spec.selector.matchLabels does not select its pod template's labels")
	}
	pod := get(dep.m, "spec", "template", "spec")
	grace, _ := toInt(get(pod, "terminationGracePeriodSeconds"))
	if time.Duration(grace)*time.Second <= leaseTTL {
		fail("terminationGracePeriodSeconds %d must exceed worker.lease_ttl %s (a stop checkpoints the batch and releases the leases)", grace, leaseTTL)
	}
	if get(pod, "securityContext", "runAsNonRoot") != true {
		fail("pod securityContext.runAsNonRoot is not true")
	}
	if u, ok := toInt(get(pod, "securityContext", "runAsUser")); !ok || u == 0 {
		fail("pod securityContext.runAsUser must be a non-zero uid")
	}
	mountable := map[string]bool{}
	for _, v := range list(pod, "volumes") {
		mountable[str(v, "name")] = true
	}
	containers := list(pod, "containers")
	if len(containers) != 1 {
		fail("want one container in the pod, found %d", len(containers))
		return errs
	}
	all := append(slices.Clone(containers), list(pod, "initContainers")...)
	for _, c := range all {
		name := str(c, "name")
		sc := get(c, "securityContext")
		if get(sc, "readOnlyRootFilesystem") != true {
			fail("container %s: securityContext.readOnlyRootFilesystem is not true", name)
		}
		if get(sc, "allowPrivilegeEscalation") != false {
			fail("container %s: securityContext.allowPrivilegeEscalation is not false", name)
		}
		if !slices.Contains(list(sc, "capabilities", "drop"), any("ALL")) {
			fail("container %s: securityContext.capabilities.drop lacks ALL", name)
		}
		if str(c, "resources", "requests", "memory") == "" || str(c, "resources", "limits", "memory") == "" {
			fail("container %s: resources.requests.memory and limits.memory must be set", name)
		}
		for _, m := range list(c, "volumeMounts") {
			if !mountable[str(m, "name")] {
				fail("container %s mounts volume %q, which the pod does not define", name, str(m, "name"))
			}
		}
	}
	c := containers[0]
	var args []string
	for _, a := range list(c, "args") {
		s, _ := a.(string)
		args = append(args, s)
	}
	if len(args) == 0 || args[0] != "run" {
		fail("container args %q do not start with run", args)
	}
	if i := slices.Index(args, "--listen"); i < 0 || i+1 >= len(args) || args[i+1] != "0.0.0.0:"+strconv.Itoa(metricsPort) {
		fail("container args %q lack --listen 0.0.0.0:%d (the default is loopback, unreachable by probes)", args, metricsPort)
	}
	if i := slices.Index(args, "--config"); i < 0 || i+1 >= len(args) || args[i+1] != "/etc/rekey/rekey.yaml" {
		fail("container args %q lack --config /etc/rekey/rekey.yaml", args)
	}
	ports := map[string]int{}
	for _, p := range list(c, "ports") {
		n, _ := toInt(get(p, "containerPort"))
		ports[str(p, "name")] = n
	}
	if !slices.Contains(slices.Collect(mapValues(ports)), metricsPort) {
		fail("container declares no containerPort %d", metricsPort)
	}
	probePort := func(probe string) int {
		switch p := get(c, probe, "httpGet", "port").(type) {
		case int:
			return p
		case string:
			return ports[p]
		}
		return 0
	}
	for probe, path := range map[string]string{"readinessProbe": "/readyz", "livenessProbe": "/healthz"} {
		if got := str(c, probe, "httpGet", "path"); got != path {
			fail("%s path is %q, want %s", probe, got, path)
		}
		if got := probePort(probe); got != metricsPort {
			fail("%s port is %d, want %d", probe, got, metricsPort)
		}
	}
	env := map[string]any{}
	for _, e := range list(c, "env") {
		env[str(e, "name")] = e
	}
	if got := str(env["REKEY_WORKER_ID"], "valueFrom", "fieldRef", "fieldPath"); got != "metadata.name" {
		fail("env REKEY_WORKER_ID comes from %q, want fieldRef metadata.name (unique per pod)", got)
	}
	// Every secret and config map the pod refers to is among the manifests,
	// with the key referred to.
	objects := map[string]doc{}
	for _, d := range docs {
		objects[d.kind()+"/"+d.name()] = d
	}
	for _, cc := range all {
		for _, e := range list(cc, "env") {
			ref := get(e, "valueFrom", "secretKeyRef")
			if ref == nil {
				continue
			}
			s, ok := objects["Secret/"+str(ref, "name")]
			if !ok {
				fail("env %s refers to Secret %q, not among the manifests", str(e, "name"), str(ref, "name"))
			} else if get(s.m, "stringData", str(ref, "key")) == nil && get(s.m, "data", str(ref, "key")) == nil {
				fail("env %s refers to key %q of Secret %s, which it lacks", str(e, "name"), str(ref, "key"), s.name())
			}
		}
	}
	for _, v := range list(pod, "volumes") {
		if cm := str(v, "configMap", "name"); cm != "" {
			if _, ok := objects["ConfigMap/"+cm]; !ok {
				fail("volume %s refers to ConfigMap %q, not among the manifests", str(v, "name"), cm)
			}
		}
		if pvc := str(v, "persistentVolumeClaim", "claimName"); pvc != "" {
			if _, ok := objects["PersistentVolumeClaim/"+pvc]; !ok {
				fail("volume %s refers to PersistentVolumeClaim %q, not among the manifests", str(v, "name"), pvc)
			}
		}
	}
	// The Service, the PodDisruptionBudget and the monitor select the pods.
	for _, d := range docs {
		switch d.kind() {
		case "Service":
			if !selects(get(d.m, "spec", "selector"), podLabels) {
				fail("Service %s does not select the Deployment's pod labels", d.name())
			}
			ok := false
			for _, p := range list(d.m, "spec", "ports") {
				port, _ := toInt(get(p, "port"))
				tp := get(p, "targetPort")
				if port == metricsPort && (tp == "http" && ports["http"] == metricsPort || tp == metricsPort) {
					ok = true
				}
			}
			if !ok {
				fail("Service %s has no port %d reaching the container's %d", d.name(), metricsPort, metricsPort)
			}
		case "PodDisruptionBudget":
			if !selects(get(d.m, "spec", "selector", "matchLabels"), podLabels) {
				fail("PodDisruptionBudget %s does not select the Deployment's pod labels", d.name())
			}
		case "ServiceMonitor":
			matched := false
			for _, s := range docs {
				if s.kind() == "Service" && selects(get(d.m, "spec", "selector", "matchLabels"), get(s.m, "metadata", "labels")) {
					matched = true
				}
			}
			if !matched {
				fail("ServiceMonitor %s selects no Service's labels", d.name())
			}
			if p := str(d.m, "spec", "endpoints", 0, "path"); p != "/metrics" {
				fail("ServiceMonitor %s scrapes %q, want /metrics", d.name(), p)
			}
		}
	}
	return errs
}

func mapValues(m map[string]int) func(func(int) bool) {
	return func(yield func(int) bool) {
		for _, v := range m {
			if !yield(v) {
				return
			}
		}
	}
}

var envRef = regexp.MustCompile(`\$\{([A-Za-z_][A-Za-z0-9_]*)\}`)

// secretEnv are the secrets both deployments pass in the environment; set
// with placeholders wherever a config is loaded.
var secretEnv = map[string]string{
	"PGPASSWORD":       "placeholder-password",
	"REKEY_MASTER_KEY": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
}

// loadConfig writes data to a temporary rekey.yaml, sets every ${VAR} it
// refers to (and the secrets), and loads it with config.Load.
func loadConfig(t *testing.T, data []byte) (*config.Config, string) {
	t.Helper()
	for k, v := range secretEnv {
		t.Setenv(k, v)
	}
	for _, m := range envRef.FindAllSubmatch(data, -1) {
		if _, set := secretEnv[string(m[1])]; !set {
			t.Setenv(string(m[1]), "placeholder-"+strings.ToLower(string(m[1])))
		}
	}
	path := filepath.Join(t.TempDir(), "rekey.yaml")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := config.Load(path)
	if err != nil {
		t.Fatalf("config.Load: %v", err)
	}
	return c, path
}

// checkReplicaConfig: a config for several replicas uses postgres, keeps
// the password out of the file and gives a lease.
func checkReplicaConfig(c *config.Config, raw []byte) []string {
	var errs []string
	if c.Store.Driver != config.DriverPostgres {
		errs = append(errs, fmt.Sprintf("store.driver is %q, want postgres", c.Store.Driver))
	}
	// A password in the DSN must come from the environment, not the file.
	var file struct {
		Store struct{ DSN string } `yaml:"store"`
	}
	if err := yaml.Unmarshal(raw, &file); err != nil {
		errs = append(errs, err.Error())
	}
	if c.Store.RedactedDSN() != string(c.Store.DSN) && !envRef.MatchString(file.Store.DSN) {
		errs = append(errs, "store.dsn holds a password literally: use ${PGPASSWORD} or leave it out (pgx reads PGPASSWORD)")
	}
	if c.Worker.LeaseTTL <= 0 {
		errs = append(errs, "worker.lease_ttl is not positive")
	}
	for name, b := range c.Backends {
		if s, ok := b.Settings.(*localkms.Settings); ok && s.MasterKeyFile != "" {
			errs = append(errs, fmt.Sprintf("backend %s keeps its master key in a file: use REKEY_MASTER_KEY", name))
		}
	}
	return errs
}

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// rekeyBinary builds cmd/rekey once for the package's tests.
func rekeyBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "deploy-test-*")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "rekey")
		out, err := exec.Command("go", "build", "-o", binPath, "../cmd/rekey").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build ../cmd/rekey: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

func TestMain(m *testing.M) {
	code := m.Run()
	if binPath != "" {
		os.RemoveAll(filepath.Dir(binPath))
	}
	os.Exit(code)
}

// validateWithBinary runs `rekey config validate` on path with the
// environment the test set.
func validateWithBinary(t *testing.T, path string) {
	t.Helper()
	cmd := exec.Command(rekeyBinary(t), "config", "validate", "--config", path)
	cmd.Dir = t.TempDir()
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "is valid") {
		t.Errorf("rekey config validate --config %s: %v\n%s", path, err, out)
	}
}

func configMapConfig(t *testing.T, docs []doc) []byte {
	t.Helper()
	cm := only(t, docs, "ConfigMap")
	s := str(cm.m, "data", "rekey.yaml")
	if s == "" {
		t.Fatalf("ConfigMap %s has no data rekey.yaml", cm.name())
	}
	return []byte(s)
}

func TestKubernetesManifests(t *testing.T) {
	docs := loadManifests(t, k8sDir)
	raw := configMapConfig(t, docs)
	c, path := loadConfig(t, raw)
	var errs []string
	errs = append(errs, checkKinds(docs)...)
	errs = append(errs, checkKustomization(docs)...)
	errs = append(errs, checkReplicaConfig(c, raw)...)
	errs = append(errs, checkDeployment(docs, c.Worker.LeaseTTL)...)
	for _, e := range errs {
		t.Error(e)
	}
	validateWithBinary(t, path)
}

// TestKubernetesKustomizeBuilds renders the kustomization with kubectl,
// which this machine has; the field checks above do not need it.
func TestKubernetesKustomizeBuilds(t *testing.T) {
	kubectl, err := exec.LookPath("kubectl")
	if err != nil {
		t.Skip("kubectl is not installed: the kustomization is not rendered (TestKubernetesManifests still checks every file)")
	}
	out, err := exec.Command(kubectl, "kustomize", k8sDir).CombinedOutput()
	if err != nil {
		t.Fatalf("kubectl kustomize %s: %v\n%s", k8sDir, err, out)
	}
	dec := yaml.NewDecoder(bytes.NewReader(out))
	n := 0
	for {
		var m map[string]any
		if err := dec.Decode(&m); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatalf("kubectl kustomize output: %v", err)
		}
		if str(m, "metadata", "namespace") != "rekey" && str(m, "kind") != "Namespace" {
			t.Errorf("%s %s rendered outside namespace rekey", str(m, "kind"), str(m, "metadata", "name"))
		}
		n++
	}
	want := len(loadManifests(t, k8sDir)) - 1 // all but the kustomization
	if n != want {
		t.Errorf("kubectl kustomize rendered %d objects, want %d", n, want)
	}
}

func TestPrometheusRuleMatchesRulesFile(t *testing.T) {
	rule := only(t, loadManifests(t, k8sDir), "PrometheusRule")
	data, err := os.ReadFile(rulesFile)
	if err != nil {
		t.Fatal(err)
	}
	var rules map[string]any
	if err := yaml.Unmarshal(data, &rules); err != nil {
		t.Fatalf("%s: %v", rulesFile, err)
	}
	if msg := sameGroups(get(rule.m, "spec", "groups"), rules["groups"]); msg != "" {
		t.Errorf("PrometheusRule %s spec.groups differ from %s: %s (regenerate it, see its header)", rule.name(), rulesFile, msg)
	}
}

// sameGroups returns "" when the two rule groups are equal, else what
// differs first.
func sameGroups(got, want any) string {
	g, w := list(got), list(want)
	if len(w) == 0 {
		return "the rules file has no groups"
	}
	if len(g) != len(w) {
		return fmt.Sprintf("%d groups, want %d", len(g), len(w))
	}
	for i := range w {
		gr, wr := list(g[i], "rules"), list(w[i], "rules")
		if len(gr) != len(wr) {
			return fmt.Sprintf("group %s: %d rules, want %d", str(w[i], "name"), len(gr), len(wr))
		}
		for j := range wr {
			if !reflect.DeepEqual(gr[j], wr[j]) {
				return fmt.Sprintf("group %s: rule %s differs", str(w[i], "name"), str(wr[j], "alert"))
			}
		}
	}
	if !reflect.DeepEqual(got, want) {
		return "group fields differ"
	}
	return ""
}

// unit is a parsed systemd unit: section → key → values in order.
type unit map[string]map[string][]string

// parseUnit reads the INI-like unit format: [Section], Key=Value lines,
// comments (# ;), blank lines; a trailing backslash continues a line.
func parseUnit(data string) (unit, error) {
	u := unit{}
	sec := ""
	var cont string
	for n, line := range strings.Split(data, "\n") {
		line = strings.TrimSpace(line)
		if cont != "" {
			line, cont = cont+" "+line, ""
		}
		if strings.HasSuffix(line, "\\") {
			cont = strings.TrimSuffix(line, "\\")
			continue
		}
		switch {
		case line == "" || line[0] == '#' || line[0] == ';':
		case line[0] == '[' && line[len(line)-1] == ']':
			sec = line[1 : len(line)-1]
			if u[sec] == nil {
				u[sec] = map[string][]string{}
			}
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok || sec == "" {
				return nil, fmt.Errorf("line %d: %q is neither a section nor Key=Value in a section", n+1, line)
			}
			u[sec][strings.TrimSpace(k)] = append(u[sec][strings.TrimSpace(k)], strings.TrimSpace(v))
		}
	}
	return u, nil
}

func (u unit) last(sec, key string) string {
	v := u[sec][key]
	if len(v) == 0 {
		return ""
	}
	return v[len(v)-1]
}

// checkUnit checks the hardened unit's keys against the brief.
func checkUnit(u unit, leaseTTL time.Duration) []string {
	var errs []string
	fail := func(format string, args ...any) { errs = append(errs, fmt.Sprintf(format, args...)) }
	s := "Service"
	if got := u.last(s, "ExecStart"); got != wantExec {
		fail("ExecStart=%q, want %q", got, wantExec)
	}
	if u.last(s, "DynamicUser") != "yes" && (u.last(s, "User") == "" || u.last(s, "User") == "root") {
		fail("neither DynamicUser=yes nor a non-root User=")
	}
	for key, want := range map[string]string{
		"ProtectSystem":   "strict",
		"NoNewPrivileges": "yes",
		"PrivateTmp":      "yes",
		"KillSignal":      "SIGTERM",
		"StateDirectory":  "rekey",
	} {
		if got := u.last(s, key); got != want {
			fail("%s=%q, want %s", key, got, want)
		}
	}
	if r := u.last(s, "Restart"); r != "on-failure" && r != "always" && r != "on-abnormal" {
		fail("Restart=%q: want a restart policy (on-failure)", r)
	}
	env := u.last(s, "EnvironmentFile")
	if env == "" || !strings.HasPrefix(strings.TrimPrefix(env, "-"), "/etc/rekey/") {
		fail("EnvironmentFile=%q: want the secrets file under /etc/rekey/", env)
	}
	stop, err := time.ParseDuration(u.last(s, "TimeoutStopSec"))
	if err != nil {
		fail("TimeoutStopSec=%q: want a duration such as 90s", u.last(s, "TimeoutStopSec"))
	} else if stop <= leaseTTL {
		fail("TimeoutStopSec=%s must exceed worker.lease_ttl %s", stop, leaseTTL)
	}
	if u.last("Install", "WantedBy") == "" {
		fail("[Install] has no WantedBy=")
	}
	return errs
}

func TestSystemdUnit(t *testing.T) {
	data, err := os.ReadFile(unitFile)
	if err != nil {
		t.Fatal(err)
	}
	u, err := parseUnit(string(data))
	if err != nil {
		t.Fatalf("%s: %v", unitFile, err)
	}
	raw, err := os.ReadFile(unitConfig)
	if err != nil {
		t.Fatal(err)
	}
	c, path := loadConfig(t, raw)
	for _, e := range checkUnit(u, c.Worker.LeaseTTL) {
		t.Errorf("%s: %s", unitFile, e)
	}
	for _, e := range checkReplicaConfig(c, raw) {
		t.Errorf("%s: %s", unitConfig, e)
	}
	validateWithBinary(t, path)
	// The unit keeps the config where ExecStart reads it.
	if !strings.Contains(string(data), "rekey.yaml /etc/rekey/rekey.yaml") {
		t.Errorf("%s: the install steps do not put rekey.yaml at /etc/rekey/rekey.yaml", unitFile)
	}
}

// TestSystemdAnalyzeVerify lets systemd judge the unit (unknown keys, bad
// values), with ExecStart pointing at a built binary since
// /usr/local/bin/rekey is not installed here.
func TestSystemdAnalyzeVerify(t *testing.T) {
	sa, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze is not installed: the unit is not verified by systemd (TestSystemdUnit still checks its keys)")
	}
	data, err := os.ReadFile(unitFile)
	if err != nil {
		t.Fatal(err)
	}
	text := strings.ReplaceAll(string(data), "/usr/local/bin/rekey", rekeyBinary(t))
	path := filepath.Join(t.TempDir(), "rekey.service")
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(sa, "verify", path).CombinedOutput()
	// verify exits 0 on unknown keys but names them: any output is a finding.
	if err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Errorf("systemd-analyze verify %s: %v\n%s", unitFile, err, out)
	}
}
