// The build page's log: stays at the bottom while "follow" is on (a scroll up turns it off, a
// scroll back to the bottom on again), and keeps the live stream's resume point in its URL so
// that a reconnect after a dropped connection neither repeats nor skips lines.
(function () {
  function setup() {
    var log = document.getElementById('log');
    var follow = document.getElementById('follow');
    if (!log || !follow) return;
    var atBottom = function () { return log.scrollHeight - log.scrollTop - log.clientHeight < 24; };
    var stick = function () { if (follow.checked) log.scrollTop = log.scrollHeight; };
    if (!location.hash) stick();
    log.addEventListener('scroll', function () { follow.checked = atBottom(); });
    follow.addEventListener('change', stick);
    log.addEventListener('htmx:sseBeforeMessage', function (e) {
      var id = e.detail && e.detail.lastEventId;
      var url = log.getAttribute('sse-connect');
      if (id && url) {
        var parts = id.split('.');
        log.setAttribute('sse-connect', url.replace(/after=\d+/, 'after=' + parts[0]).replace(/line=\d+/, 'line=' + parts[1]));
      }
    });
    log.addEventListener('htmx:afterSwap', stick);
    log.addEventListener('htmx:sseMessage', stick);
    // The build's end: the state badge says how it ended (the stream closes on it).
    log.addEventListener('htmx:sseOpen', function (e) {
      e.detail.source.addEventListener('end', function (m) {
        var state = document.getElementById('state');
        if (state) { state.textContent = m.data; state.className = 'state s-' + m.data; }
      });
    });
  }
  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', setup); else setup();
})();
