// The build page's log: live lines from the SSE stream (htmx's SSE extension holds the
// connection), merged by line id so that a line still being written is replaced when it grows
// or ends; stays at the bottom while "follow" is on (a scroll up turns it off, a scroll back to
// the bottom on again); keeps at most MAX_LINES line nodes (the oldest leave; the raw log and the
// pages of earlier lines have them); keeps the stream's resume point in its URL so that a
// reconnect after a dropped connection neither repeats nor skips lines.
(function () {
  var MAX_LINES = 5000;
  function setup() {
    var log = document.getElementById('log');
    var follow = document.getElementById('follow');
    if (!log || !follow) return;
    var atBottom = function () { return log.scrollHeight - log.scrollTop - log.clientHeight < 24; };
    var stick = function () { if (follow.checked) log.scrollTop = log.scrollHeight; };
    if (!location.hash) stick();
    log.addEventListener('scroll', function () { follow.checked = atBottom(); });
    follow.addEventListener('change', stick);
    var merge = function (html) {
      var t = document.createElement('template');
      t.innerHTML = html;
      var line;
      while ((line = t.content.firstElementChild)) {
        var old = line.id && document.getElementById(line.id);
        if (old && old.parentNode === log) old.replaceWith(line); else log.appendChild(line);
      }
      // The oldest lines leave; a reader scrolled up keeps seeing the same lines.
      var removed = 0;
      while (log.childElementCount > MAX_LINES) {
        removed += log.firstElementChild.offsetHeight;
        log.firstElementChild.remove();
      }
      if (removed) {
        if (!follow.checked) log.scrollTop = Math.max(0, log.scrollTop - removed);
        var note = document.getElementById('trimmed');
        if (note) note.hidden = false;
        var earlier = document.getElementById('earlier');
        if (earlier) earlier.hidden = true;
      }
    };
    log.addEventListener('htmx:sseOpen', function (e) {
      var source = e.detail.source;
      if (source.cbWired) return;
      source.cbWired = true;
      source.addEventListener('log', function (m) {
        merge(m.data);
        var url = log.getAttribute('sse-connect');
        var at = (m.lastEventId || '').split('.');
        if (at.length === 4 && url) {
          log.setAttribute('sse-connect', url.replace(/after=\d+/, 'after=' + at[0]).replace(/skip=\d+/, 'skip=' + at[1])
            .replace(/line=\d+/, 'line=' + at[2]).replace(/style=\d+/, 'style=' + at[3]));
        }
        stick();
      });
      // The build's end: the state badge says how it ended, in the page's language.
      source.addEventListener('end', function (m) {
        var end = JSON.parse(m.data);
        var state = document.getElementById('state');
        if (state) { state.textContent = end.text; state.className = 'state s-' + end.state; }
        var open = log.querySelectorAll('.l.open');
        for (var i = 0; i < open.length; i++) open[i].classList.remove('open');
      });
    });
  }
  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', setup); else setup();
})();
