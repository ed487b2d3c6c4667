(function () {
  var root = document.currentScript.parentNode;
  var data = JSON.parse(root.querySelector("script.advlib-explorer-data").textContent);
  var input = root.querySelector(".advlib-explorer-slider input");
  var readout = root.querySelector(".advlib-explorer-readout");
  var names = data.classes;  // class names, label k -> names[k]; absent: labels are shown as numbers
  function name(k) { return names ? names[k] : k; }
  function esc(s) { return String(s).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;"); }
  function q(sel) { return root.querySelector(sel); }
  function all(sel) { return root.querySelectorAll(sel); }
  function show(i) {
    var f = data.frames[i], e = f.eps.toFixed(3);
    readout.textContent = e;
    input.setAttribute("aria-valuetext", "ε = " + e + " normalized");
    q(".advlib-v-eps").textContent = e;
    q(".advlib-v-epspx").textContent = f.eps_pixel.toFixed(4);
    q(".advlib-v-acc").textContent = f.adv_accuracy.toFixed(2) + "%";
    q(".advlib-v-asr").textContent = f.asr.toFixed(2) + "%";
    q(".advlib-v-preds").textContent = f.preds.map(function (p, k) {
      return name(p) + " (" + f.confidences[k].toFixed(0) + "%)"; }).join(" · ");
    var adv = all("img.advlib-explorer-adv"), pert = all("img.advlib-explorer-pert");
    var caps = all(".advlib-explorer-caption");
    f.preds.forEach(function (p, k) {
      var t = data.labels[k], c = f.confidences[k].toFixed(0);
      adv[k].src = f.adversarial[k];
      adv[k].alt = "FGSM image at ε = " + e + ", true " + name(t) + ", predicted " + name(p) + " (" + c + "%)";
      pert[k].src = f.perturbation[k];
      pert[k].alt = "perturbation x_adv − x of the image with true label " + name(t) + " at ε = " + e;
      caps[k].innerHTML = names ? "true " + esc(name(t)) + "<br>→ <b>" + esc(name(p)) + "</b> (" + c + "%)"
                                : "true " + t + " →<br><b>" + p + "</b> (" + c + "%)";
      caps[k].classList.toggle("advlib-explorer-wrong", p !== t);
    });
    var m = q(".advlib-explorer-marker");
    m.setAttribute("cx", f.marker[0]);
    m.setAttribute("cy", f.marker[1]);
  }
  input.addEventListener("input", function () { show(+input.value); });
  q(".advlib-explorer-slider").hidden = false;
  show(+input.value);
})();
