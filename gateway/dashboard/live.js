// Live calls page: applies the server's pushed events (state, last turns, ended calls) between reloads.
// Without scripts the page's <noscript> meta refresh reloads it instead.
"use strict";
(function () {
  var source = new EventSource(document.body.dataset.live);
  function card(id) { return document.getElementById("call-" + id); }
  source.addEventListener("call", function (message) {
    var call = JSON.parse(message.data), article = card(call.id);
    if (!article) { window.location.reload(); return; }  // a new call: the server renders its card
    article.querySelector(".state").textContent = call.state;
    var list = article.querySelector(".turns");
    list.replaceChildren.apply(list, call.turns.map(function (turn) {
      var item = document.createElement("li"), who = document.createElement("strong");
      who.textContent = turn.speaker;
      item.append(who, ": " + turn.text);
      return item;
    }));
  });
  source.addEventListener("gone", function (message) {
    var article = card(JSON.parse(message.data).id);
    if (article) { article.remove(); }
  });
})();
