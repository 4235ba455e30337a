// A real TFE client against Terrapod VCS (SPEC section 10): HashiCorp's go-tfe, as
// Debian packages it, manages a VCS-driven workspace here the way scripts and the tfe
// provider do. Built in GOPATH mode with Debian's Go (no module downloads); run by
// the API test suite (api/tests/api/go_tfe.rs), which checks afterwards that the
// unlinked workspace no longer polls. Exits 1 on the first disagreement.
//
// Environment: TFE_ADDRESS (http://127.0.0.1:PORT), TFE_TOKEN, TFE_CONNECTION (vcs-…),
// TFE_REPO (owner/name).
package main

import (
	"context"
	"fmt"
	"os"
	"time"

	tfe "github.com/hashicorp/go-tfe"
)

const org = "default"
const name = "go-tfe"

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "go-tfe: "+format+"\n", args...)
	os.Exit(1)
}

func check(ok bool, format string, args ...interface{}) {
	if !ok {
		fail(format, args...)
	}
}

// checkLinked checks every VCS field go-tfe decodes.
func checkLinked(what string, ws *tfe.Workspace, repo, connection, branch, dir string) {
	check(ws.VCSRepo != nil, "%s: VCSRepo is nil", what)
	check(ws.VCSRepo.Identifier == repo, "%s: identifier %q, want %q", what, ws.VCSRepo.Identifier, repo)
	check(ws.VCSRepo.DisplayIdentifier == repo, "%s: display identifier %q", what, ws.VCSRepo.DisplayIdentifier)
	check(ws.VCSRepo.OAuthTokenID == connection, "%s: oauth-token-id %q, want %q", what, ws.VCSRepo.OAuthTokenID, connection)
	check(ws.VCSRepo.Branch == branch, "%s: branch %q, want %q", what, ws.VCSRepo.Branch, branch)
	check(!ws.VCSRepo.IngressSubmodules, "%s: ingress-submodules", what)
	check(ws.WorkingDirectory == dir, "%s: working directory %q, want %q", what, ws.WorkingDirectory, dir)
	check(ws.SpeculativeEnabled, "%s: speculative-enabled is false", what)
	check(ws.FileTriggersEnabled, "%s: file-triggers-enabled is false", what)
	check(ws.Permissions != nil && ws.Permissions.CanUpdate && ws.Permissions.CanQueueRun, "%s: permissions %+v", what, ws.Permissions)
	check(ws.Actions != nil && ws.Actions.IsDestroyable, "%s: actions %+v", what, ws.Actions)
	check(ws.Organization != nil && ws.Organization.Name == org, "%s: organization %+v", what, ws.Organization)
	check(!ws.CreatedAt.IsZero(), "%s: created-at is zero", what)
}

func main() {
	repo, connection := os.Getenv("TFE_REPO"), os.Getenv("TFE_CONNECTION")
	client, err := tfe.NewClient(&tfe.Config{Address: os.Getenv("TFE_ADDRESS"), Token: os.Getenv("TFE_TOKEN")})
	if err != nil {
		fail("client: %v", err)
	}
	ctx := context.Background()

	created, err := client.Workspaces.Create(ctx, org, tfe.WorkspaceCreateOptions{
		Name:             tfe.String(name),
		WorkingDirectory: tfe.String("infra"),
		VCSRepo: &tfe.VCSRepoOptions{
			Identifier:   tfe.String(repo),
			OAuthTokenID: tfe.String(connection),
			Branch:       tfe.String("main"),
		},
	})
	if err != nil {
		fail("create: %v", err)
	}
	checkLinked("create", created, repo, connection, "main", "infra")

	byName, err := client.Workspaces.Read(ctx, org, name)
	if err != nil {
		fail("read by name: %v", err)
	}
	checkLinked("read by name", byName, repo, connection, "main", "infra")
	byID, err := client.Workspaces.ReadByID(ctx, created.ID)
	if err != nil {
		fail("read by id: %v", err)
	}
	checkLinked("read by id", byID, repo, connection, "main", "infra")
	found, err := client.Workspaces.List(ctx, org, tfe.WorkspaceListOptions{Search: tfe.String("go-t")})
	if err != nil {
		fail("list: %v", err)
	}
	check(len(found.Items) == 1 && found.Items[0].ID == created.ID, "search[name]: %d workspaces", len(found.Items))

	// Linking queued a poll: the head of main becomes a run.
	var runs *tfe.RunList
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		runs, err = client.Runs.List(ctx, created.ID, tfe.RunListOptions{})
		if err != nil {
			fail("list runs: %v", err)
		}
		if len(runs.Items) > 0 {
			break
		}
		check(time.Now().Before(deadline), "no run within 60 s of linking")
	}
	run, err := client.Runs.Read(ctx, runs.Items[0].ID)
	if err != nil {
		fail("read run: %v", err)
	}
	check(run.Status == tfe.RunPending, "run status %q", run.Status)
	check(string(run.Source) == "vcs", "run source %q", run.Source)
	check(run.StatusTimestamps != nil, "run status-timestamps missing")
	check(run.Actions != nil && run.Actions.IsCancelable && !run.Actions.IsConfirmable, "run actions %+v", run.Actions)
	check(run.ConfigurationVersion != nil && run.ConfigurationVersion.ID != "", "run without configuration version")
	cv, err := client.ConfigurationVersions.Read(ctx, run.ConfigurationVersion.ID)
	if err != nil {
		fail("read configuration version: %v", err)
	}
	check(cv.ID == run.ConfigurationVersion.ID && !cv.Speculative, "configuration version %+v", cv)

	updated, err := client.Workspaces.Update(ctx, org, name, tfe.WorkspaceUpdateOptions{
		WorkingDirectory: tfe.String("envs/prod"),
		VCSRepo:          &tfe.VCSRepoOptions{Branch: tfe.String("release")},
	})
	if err != nil {
		fail("update: %v", err)
	}
	checkLinked("update", updated, repo, connection, "release", "envs/prod")

	unlinked, err := client.Workspaces.RemoveVCSConnection(ctx, org, name)
	if err != nil {
		fail("remove VCS connection: %v", err)
	}
	check(unlinked.VCSRepo == nil, "still linked after RemoveVCSConnection: %+v", unlinked.VCSRepo)
	again, err := client.Workspaces.ReadByID(ctx, created.ID)
	if err != nil {
		fail("read after unlinking: %v", err)
	}
	check(again.VCSRepo == nil, "still linked when read again: %+v", again.VCSRepo)
	fmt.Printf("go-tfe: every check passed (workspace %s, run %s)\n", created.ID, run.ID)
}
