# The cloudbuild CLI's own messages (en-US). Keys match locales/zh-CN/cli.ftl; a test checks.
error = error: { $message }
warning = warning: { $message }
pass-task-id = a task id
pass-project-name = a project name
no-package-json = no package.json in { $dir }, so no project here: pass { $what }
not-json = { $what } is not valid JSON
no-name = { $path } has no "name"; pass { $what }
opening = opening { $url }
no-browser = no browser could be opened here (xdg-open, open, …); the site is at { $url }
no-git = cannot run git; is it installed?
no-ls-remote = cannot ask `origin` for its commits (git ls-remote origin)
not-a-checkout = not inside a git checkout: run publish in your project's repository
no-origin = the checkout has no remote `origin`; the server clones from it (git remote add origin <url>)
no-commits = the repository has no commits yet: commit your project and push it, then publish (git add -A && git commit -m "first commit" && git push -u origin HEAD)
detached = HEAD is detached; pass --branch <branch or tag>
not-pushed-branch = `origin` ({ $repo }) has no branch or tag `{ $branch }`: push it first (git push -u origin { $branch })
uncommitted = { $count ->
    [one] 1 file has uncommitted changes
   *[other] { $count } files have uncommitted changes
}
ahead = { $count ->
    [one] 1 commit is not pushed to origin/{ $branch }
   *[other] { $count } commits are not pushed to origin/{ $branch }
}
head-differs = HEAD ({ $head }) is not origin/{ $branch } ({ $commit })
problems-joiner = , and
dirty-refused = { $what }; the server builds what `origin` has (commit { $commit }), without them.
    Commit and push (git push), then publish again; or pass --allow-dirty to publish origin/{ $branch } as it is.
dirty-warning = { $what }; publishing origin/{ $branch } (commit { $commit }) without them
package-at-commit = package.json at commit { $commit }
no-package = cannot read { $from }; the project's name and version come from it
no-field = { $from } has no "{ $field }" field; the project's name and version come from it
publishing = publishing { $name }@{ $version } to { $env }: { $repo } branch { $branch } at commit { $commit }
queued = task { $id } queued: { $name }@{ $version } ({ $repo } { $branch })
follow-hint = follow it with: cloudbuild logs { $id } --follow
published = published: { $url }
task-ended = task { $id } { $state }: { $reason }
task-skipped = task { $id } skipped, nothing was built or published: { $reason }
interrupted = interrupted; task { $id } keeps running on the server. Follow it with: cloudbuild logs { $id } --follow
ask-cancel = Cancel task { $id } on the server? [y/N]
task-is = task { $id } is { $state }
cancel-requested = cancel requested: the worker is stopping task { $id } (see `cloudbuild logs { $id }`)
keeps-running = task { $id } keeps running. Follow it with: cloudbuild logs { $id } --follow
still-running = … { $stage } still running: no output for { $seconds } s
unreachable = cannot reach the cloudbuild server at { $url } ({ $why }); is `cloudbuild server` running there? (set --server or CLOUDBUILD_SERVER)
answer-stalled = the answer stalled
no-answer-within = no answer within { $seconds } s
proxy-failed = { $url } answered HTTP { $status } without a cloudbuild error: a proxy in front of the server, or the server itself, failed; try again, or see the server's log
not-cloudbuild = { $url } answered HTTP { $status } as no cloudbuild server would: it is not a cloudbuild server, or not its root URL. Use the URL `cloudbuild server` prints when it starts (`listening on http://…`), with --server or CLOUDBUILD_SERVER
lost-stream = lost the event stream of task { $id }; follow it again with `cloudbuild logs { $id } --follow`
bad-server-url = --server must be an http:// or https:// URL, not `{ $server }`
bad-token = the API token contains characters that cannot be sent in a header
no-runtime = cannot start the async runtime: { $why }
no-config-dir = no config directory ({ $why }): set HOME or CLOUDBUILD_CONFIG_DIR
reading = reading { $path }
creating = creating { $path }
writing = writing { $path }
not-credentials = { $path } is not a credentials file
credentials-readable = { $path } is readable by others (mode { $mode }); run `chmod 600 { $path }` and sign in again
output-truncated = output truncated
state-awaiting_approval = awaiting approval
state-gated = gated (freeze window)
state-queued = queued
state-running = running
state-succeeded = succeeded
state-skipped = skipped
state-failed = failed
state-cancelled = cancelled
state-timed_out = timed out
